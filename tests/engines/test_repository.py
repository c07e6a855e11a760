"""Engine repository: manifests, device keys read from a Jetson's files, and the resolver's choices."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from edge.config.loader import parse_config
from edge.daemon.service import Service
from edge.engines import repository
from edge.errors import EngineError

ORIN = repository.DeviceKey("NVIDIA Jetson AGX Orin Developer Kit", "36.4.3", "10.3.0.30", "8.7")
NANO = dataclasses.replace(ORIN, board="NVIDIA Jetson Orin Nano Developer Kit")


@pytest.fixture
def repo(tmp_path: Path) -> repository.Manifest:
    """A repository with an fp16 ONNX variant and an fp16 plan built for ORIN (plan bytes are arbitrary here)."""
    root = tmp_path / "engines" / "m"
    (root / "plans").mkdir(parents=True)
    (root / "m.fp16.onnx").write_bytes(b"onnx-bytes")
    (root / "plans" / "m.fp16.orin.plan").write_bytes(b"plan-bytes")
    onnx = repository.Variant("fp16", "onnx", "m.fp16.onnx", repository.sha256_file(root / "m.fp16.onnx"))
    plan = repository.Variant("fp16", "plan", "plans/m.fp16.orin.plan",
                              repository.sha256_file(root / "plans/m.fp16.orin.plan"),
                          device=dataclasses.replace(ORIN, precision="fp16",
                                                     input_shapes=(("images", (1, 3, 416, 416)),)),
                          source_sha256=onnx.sha256)
    manifest = repository.Manifest(root, "m", [onnx, plan])
    manifest.save()
    return repository.Manifest.load(root)


def test_manifest_round_trip(repo: repository.Manifest) -> None:
    plan = next(v for v in repo.variants if v.format == "plan")
    assert plan.device.input_shapes == (("images", (1, 3, 416, 416)),) and plan.device.precision == "fp16"
    assert json.loads((repo.root / "manifest.json").read_text())["schema"] == 1


def test_plan_for_this_device_wins(repo: repository.Manifest) -> None:
    choice = repository.resolve(repo, "fp16", device=ORIN, allow_onnx=True)
    assert choice.format == "plan" and choice.path == repo.root / "plans/m.fp16.orin.plan"


def test_plan_for_another_device_is_never_used(repo: repository.Manifest) -> None:
    choice = repository.resolve(repo, "fp16", device=NANO, allow_onnx=True)
    assert choice.format == "onnx" and "built for ('NVIDIA Jetson AGX Orin" in choice.rejected[0]
    with pytest.raises(EngineError, match="no usable fp16 engine") as info:
        repository.resolve(repo, "fp16", device=NANO, allow_onnx=False)
    assert "Hint: on the target, build one: edge build" in str(info.value)


def test_corrupt_plan_is_refused(repo: repository.Manifest) -> None:
    (repo.root / "plans/m.fp16.orin.plan").write_bytes(b"flipped bits")
    choice = repository.resolve(repo, "fp16", device=ORIN, allow_onnx=True)
    assert choice.format == "onnx" and "does not match the manifest" in choice.rejected[0]


def test_stale_plan_is_refused(repo: repository.Manifest) -> None:
    (repo.root / "m.fp16.onnx").write_bytes(b"new onnx")
    repo.put(repository.Variant("fp16", "onnx", "m.fp16.onnx", repository.sha256_file(repo.root / "m.fp16.onnx")))
    choice = repository.resolve(repo, "fp16", device=ORIN, allow_onnx=True)
    assert choice.format == "onnx" and "stale" in choice.rejected[0]


def test_missing_files_and_no_tensorrt(repo: repository.Manifest) -> None:
    (repo.root / "plans/m.fp16.orin.plan").unlink()
    assert "file is missing" in repository.resolve(repo, "fp16", device=ORIN, allow_onnx=True).rejected[0]
    choice = repository.resolve(repo, "fp16", device=None, allow_onnx=True)
    assert choice.format == "onnx" and "TensorRT is not available" in choice.rejected[0]
    (repo.root / "m.fp16.onnx").unlink()
    with pytest.raises(EngineError, match="onnx m.fp16.onnx: file is missing"):
        repository.resolve(repo, "fp16", device=None, allow_onnx=True)
    with pytest.raises(EngineError, match="no int8 ONNX variant"):
        repository.resolve(repo, "int8", device=None, allow_onnx=True)


def test_put_replaces_same_precision_format_and_platform(repo: repository.Manifest) -> None:
    plan = next(v for v in repo.variants if v.format == "plan")
    repo.put(dataclasses.replace(plan, sha256="0" * 64))
    repo.put(dataclasses.replace(plan, device=dataclasses.replace(plan.device, board="other")))
    assert len([v for v in repo.variants if v.format == "plan"]) == 2


@pytest.mark.parametrize("content,message", [
    ("{", "not valid JSON"), ('{"schema": 2, "model": "m", "variants": []}', "schema 2"),
    ('{"schema": 1, "model": "m", "variants": [{"precision": "fp16"}]}', "malformed"),
    ('{"schema": 1, "model": "m", "variants": [{"precision": "a", "format": "tar", "file": "x", "sha256": "y"}]}',
     "unknown variant format"),
])
def test_bad_manifests(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(EngineError, match=message):
        repository.Manifest.load(tmp_path)
    with pytest.raises(EngineError, match="cannot read engine manifest"):
        repository.Manifest.load(tmp_path / "missing")


def test_device_key_from_jetson_files(tmp_path: Path) -> None:
    """Contract test against the files a Jetson has (copied layout, not a real board)."""
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64,"
        " DATE: Wed Jan  8 01:49:37 UTC 2025\n")
    assert repository.read_board(tmp_path) == "NVIDIA Jetson AGX Orin Developer Kit"
    assert repository.read_l4t(tmp_path) == "36.4.3"
    assert repository.read_board(tmp_path / "nothing") == "unknown"
    assert repository.read_l4t(tmp_path / "nothing") == "none"


def test_mender_device_type_from_the_clients_file(tmp_path: Path) -> None:
    """The Mender client's /var/lib/mender/device_type (a `device_type=...` line); "" without the client."""
    assert repository.read_device_type(tmp_path) == ""
    (tmp_path / "var/lib/mender").mkdir(parents=True)
    (tmp_path / "var/lib/mender/device_type").write_text("device_type=jetson-agx-orin\n")
    assert repository.read_device_type(tmp_path) == "jetson-agx-orin"
    (tmp_path / "var/lib/mender/device_type").write_text("garbage\n")
    assert repository.read_device_type(tmp_path) == ""
    key = repository.DeviceKey("b", "36.4.3", "10.3", "8.7", device_type="t1")
    assert repository.DeviceKey.from_json(key.to_json()) == key
    assert key.platform() == repository.DeviceKey("b", "36.4.3", "10.3", "8.7").platform()
    assert repository.DeviceKey.from_json({"board": "b", "l4t": "1", "tensorrt": "2", "sm": "3"}).device_type == ""


def test_a_device_type_file_that_is_no_small_file_reads_as_none(tmp_path: Path) -> None:
    """A link to /dev/zero, a FIFO or a huge file in its place gives "" (as on a board without Mender) at once,
    without reading it whole or waiting for a writer."""
    path = tmp_path / "var/lib/mender/device_type"
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/zero")
    assert repository.read_device_type(tmp_path) == ""
    path.unlink()
    os.mkfifo(path)
    assert repository.read_device_type(tmp_path) == ""
    path.unlink()
    path.write_text("device_type=" + "x" * 70_000 + "\n")
    assert repository.read_device_type(tmp_path) == ""


def test_service_runs_the_repository_variant(demo, tmp_path: Path) -> None:
    """On a machine without TensorRT the resolver picks the ONNX variant of the requested precision."""
    repo = tmp_path / "repo"
    shutil.copytree(demo.engines, repo)
    text = (f"version: 1\ncameras:\n  - id: c\n    uri: file://{demo.video}?realtime=0\ntasks:\n"
            f"  - name: objects\n    type: detector\n    engines: {repo}\n    precision: int8\n    cameras: [c]\n"
            f"output:\n  results: ipc://{tmp_path}/r.sock\n")
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}), max_frames=2)
    service.start()
    try:
        engine = service.tasks["objects"].active()
        assert engine.path == repo / "yolov3-tiny.int8.qdq.onnx" and engine.precision == "int8"
        assert service.run(threading.Event()) == 0
        assert service.lanes[0].stats.processed == 2
    finally:
        service.stop()
    (repo / "yolov3-tiny.int8.qdq.onnx").write_bytes(b"tampered")
    tampered = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}), max_frames=2)
    tampered.start()                  # the vehicle keeps seeing, on another variant, and says why
    try:
        runtime = tampered.tasks["objects"]
        assert runtime.precision == "fp32"
        assert re.search(r"sha256 .* does not match the manifest", runtime.unavailable["int8"])
        assert "pinned int8 not available, int8 refused (no usable int8 engine" in runtime.reason
    finally:
        tampered.stop()


def test_refused_variant_is_reported_and_the_task_runs_the_next_one(demo, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo.engines, repo)
    manifest = repository.Manifest.load(repo)
    manifest.refuse("int8", {"reason": "F1 0.35 < 0.9 against fp32 on 80 held-out vtest frames"})
    manifest.save()
    (repo / "yolov3-tiny.int8.qdq.onnx").unlink()
    assert repository.Manifest.load(repo).refused["int8"]["reason"].startswith("F1 0.35")
    with pytest.raises(EngineError, match="int8 variant was refused when made: F1 0.35 < 0.9"):
        repository.resolve(repository.Manifest.load(repo), "int8", device=None, allow_onnx=True)
    text = (f"version: 1\ncameras:\n  - id: c\n    uri: file://{demo.video}?realtime=0\ntasks:\n"
            f"  - name: objects\n    type: detector\n    engines: {repo}\n    precision: int8\n    cameras: [c]\n"
            f"output:\n  results: ipc://{tmp_path}/r.sock\n")
    service = Service(parse_config(text, source="t", base_dir=tmp_path, environ={}), max_frames=2)
    with caplog.at_level("WARNING"):
        service.start()
    try:
        engine = service.tasks["objects"].active()
        assert engine.precision == "fp32" and engine.path == repo / "yolov3-tiny.onnx"   # CPU: fp32 over fp16
        assert "task objects: no int8 variant: refused when it was made: F1 0.35" in caplog.text
        assert "pinned to int8 by the config, which cannot run (refused when it was made: F1 0.35" in caplog.text
        assert service.run(threading.Event()) == 0
    finally:
        service.stop()


def test_manifest_refused_record_without_reason_is_malformed(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"schema": 1, "model": "m", "variants": [],'
                                            ' "refused": [{"precision": "int8"}]}')
    with pytest.raises(EngineError, match="malformed.*refused variant has no reason"):
        repository.Manifest.load(tmp_path)


def test_a_manifest_that_cannot_be_written_is_an_error_with_its_fix(tmp_path: Path) -> None:
    (tmp_path / "m" / "manifest.json").mkdir(parents=True)
    with pytest.raises(EngineError) as info:
        repository.Manifest(tmp_path / "m", "m", []).save()
    assert info.value.what.startswith(f"cannot write the manifest {tmp_path / 'm' / 'manifest.json'}: ")
    assert info.value.hint == f"{tmp_path / 'm' / 'manifest.json'} is a directory: remove it, or write elsewhere"

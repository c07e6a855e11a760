"""Model toolchain on the real demo model: FP16, INT8 Q/DQ, selection, evaluation, and their bad inputs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge.errors import EngineError
from edge.tools import data, evaluate, fp16, quantize, select
from tests.support.daemon import run
from tests.support.models import conv_model

FIT = (416, 416)


@pytest.fixture(scope="module")
def frames(demo) -> dict[str, list[data.Sample]]:
    calib, _ = data.load_samples([demo.video], fit_to=FIT, every=40, frames=range(0, 400))
    held, _ = data.load_samples([demo.video], fit_to=FIT, every=40, frames=range(400, 795))
    return {"calib": calib, "held": held}


@pytest.fixture(scope="module")
def int8_model(demo, frames, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "yolo.int8.qdq.onnx"
    quantize.quantize(demo.model, out, frames["calib"], method="minmax", progress=False)
    return out


def test_fp16_keeps_io_types_and_agrees(demo, frames, tmp_path: Path) -> None:
    out = tmp_path / "yolo.fp16.onnx"
    report = fp16.convert(demo.model, out, check_images=[s.image for s in frames["held"][:3]])
    assert report.max_abs_diff <= fp16.MAX_REL_DIFF * report.max_abs_output and report.max_abs_output > 5
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert {i.data_type for i in model.graph.initializer if i.name.endswith(".weight")} == {onnx.TensorProto.FLOAT16}
    assert evaluate.evaluate(demo.model, out, frames["held"], progress=False)["f1"] >= 0.97


def test_int8_is_symmetric_per_channel_qdq(int8_model: Path) -> None:
    model = onnx.load(str(int8_model))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)     # TensorRT: symmetric
    weight_dq = [n for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")]
    assert weight_dq and all(inits[n.input[1]].size > 1 for n in weight_dq)                  # per output channel
    assert any(p.key == "edge.yolo" for p in model.metadata_props)


def test_int8_agreement_with_fp32(demo, frames, int8_model: Path) -> None:
    report = evaluate.evaluate(demo.model, int8_model, frames["held"], progress=False)
    assert report["f1"] >= 0.85 and report["map50"] >= 0.7
    assert report["worst_classes"] and report["worst_frames"]


def test_exclude_keeps_a_node_in_float(demo, frames, tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    quantize.quantize(demo.model, out, frames["calib"][:2], method="minmax", exclude=["conv15"], progress=False)
    conv = next(n for n in onnx.load(str(out)).graph.node if n.name == "conv15")
    assert not conv.input[1].endswith("_DequantizeLinear_Output")           # its weight stays float
    assert conv.input[1] == "conv15.weight"


def test_quantize_bad_inputs(demo, frames, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="calibration set is empty"):
        quantize.quantize(demo.model, tmp_path / "a.onnx", [], progress=False)
    with pytest.raises(EngineError, match=r"--exclude names nodes that are not in .*\['nope'\]"):
        quantize.quantize(demo.model, tmp_path / "a.onnx", frames["calib"][:1], exclude=["nope"], progress=False)
    with pytest.raises(EngineError, match="output directory does not exist"):
        quantize.quantize(demo.model, tmp_path / "no" / "a.onnx", frames["calib"][:1], progress=False)
    (tmp_path / "out.onnx").mkdir()
    with pytest.raises(EngineError, match="output path is a directory"):
        quantize.quantize(demo.model, tmp_path / "out.onnx", frames["calib"][:1], progress=False)
    (tmp_path / "out.onnx").rmdir()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(demo.model.read_bytes()[:4096])
    with pytest.raises(EngineError, match="cannot load ONNX model"):
        quantize.quantize(broken, tmp_path / "a.onnx", frames["calib"][:1], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]


def test_output_not_writable(demo, frames) -> None:
    """/proc/sys takes no new files from anyone, root included (the kernel refuses, whatever the capabilities),
    so this runs as root too, where a directory with mode 0500 would be writable."""
    locked = Path("/proc/sys")
    assert locked.is_dir() and not os.access(locked, os.W_OK)
    with pytest.raises(EngineError, match="output path is not writable: /proc/sys/a.onnx"):
        quantize.quantize(demo.model, locked / "a.onnx", frames["calib"][:1], progress=False)


def test_interrupted_run_leaves_no_output(demo, frames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: Ctrl-C arrives in the middle of calibration."""
    calls = []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self)
    original = quantize._Reader.get_next
    monkeypatch.setattr(quantize._Reader, "get_next", interrupted)
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous good file")
    with pytest.raises(KeyboardInterrupt):
        quantize.quantize(demo.model, target, frames["calib"][:3], progress=False)
    assert target.read_bytes() == b"previous good file"                      # old output untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]       # no temp file left


def test_data_skips_bad_files_and_refuses_too_few(demo, tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "dog.jpg").write_bytes(demo.image("dog.jpg").read_bytes())
    samples, report = data.load_samples([folder], fit_to=FIT)
    assert [Path(s.id).name for s in samples] == ["dog.jpg"] and samples[0].image.shape == (312, 416, 3)
    assert report.skipped == {"non-image files": 1, "unreadable images": 1}
    with pytest.raises(data.DataError, match="1 usable frames, at least 5 needed") as info:
        data.require(samples, report, 5, "calibration set")
    assert "1 non-image files, 1 unreadable images" in str(info.value)
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_samples([tmp_path / "missing"], fit_to=FIT)


def test_selection_is_deterministic(frames) -> None:
    pool = frames["calib"] + frames["held"]
    ids = lambda chosen: [s.id for s in chosen]  # noqa: E731
    assert ids(select.select(pool, 5, "random", seed=1)) == ids(select.select(pool, 5, "random", seed=1))
    assert ids(select.select(pool, 5, "random", seed=1)) != ids(select.select(pool, 5, "random", seed=2))
    diverse = ids(select.select(pool, 5, "diverse"))
    assert diverse == ids(select.select(pool, 5, "diverse", seed=9)) and len(set(diverse)) == 5
    with pytest.raises(ValueError, match="cannot select 99 of"):
        select.select(pool, 99, "diverse")


def test_k_center_greedy_spreads_over_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    points = np.concatenate([c + rng.normal(0, 0.1, (50, 2)) for c in centers]).astype(np.float32)
    chosen = select.k_center_greedy(points, 4)
    assert sorted({int(i) // 50 for i in chosen}) == [0, 1, 2, 3]             # one from each cluster


def test_matching_and_average_precision() -> None:
    truth = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.9, 1]], np.float32)
    found = np.array([[0, 0, 10, 11, 0.8, 0], [20, 20, 30, 30, 0.7, 0], [1, 1, 10, 10, 0.6, 0]], np.float32)
    assert evaluate.match(truth, found).tolist() == [True, False, False]      # wrong class; duplicate
    assert evaluate.average_precision(np.array([0.9, 0.8]), np.array([True, True]), 2) == 1.0
    assert evaluate.average_precision(np.array([0.9, 0.8]), np.array([False, True]), 2) == pytest.approx(0.25)
    np.testing.assert_allclose(evaluate.iou_matrix(truth[:, :4], found[:, :4])[0], [10 / 11, 0, 0.81], atol=1e-6)


def test_identical_model_agrees_perfectly(demo, frames) -> None:
    report = evaluate.evaluate(demo.model, demo.model, frames["held"][:3], progress=False)
    assert report["f1"] == 1.0 and report["map50"] == 1.0 and report["fp"] == report["fn"] == 0


def test_coco_labels_give_real_map(demo, tmp_path: Path) -> None:
    """Labels in COCO format (here the fp32 model's own detections on two images, so the plumbing
    has a known answer: the reference scores AP50 1.0 on them)."""
    samples, _ = data.load_samples([demo.image("dog.jpg"), demo.image("person.jpg")], fit_to=FIT)
    truth, labels = evaluate.reference_detections(demo.model, samples, progress=False)
    images, annotations = [], []
    for i, (sample, dets) in enumerate(zip(samples, truth)):
        images.append({"id": i + 1, "file_name": Path(sample.id).name, "width": 1, "height": 1})
        for x1, y1, x2, y2, _, cls in dets / np.array([sample.scale] * 4 + [1, 1], np.float32):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
    coco = tmp_path / "labels.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(labels)]}))
    result = evaluate.coco_map(coco, demo.model, samples, progress=False)
    assert result["images"] == 2 and result["map50"] == pytest.approx(1.0)
    with pytest.raises(data.DataError, match="none of the 1 frames"):
        evaluate.coco_map(coco, demo.model, samples[:0] + [data.Sample("x/other.jpg", samples[0].image)],
                          progress=False)


def test_cli_quantize_and_evaluate_gate(demo, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    result = run("model", "quantize", str(demo.model), str(out), "--calib", str(demo.video), "--every", "100",
                 "--count", "4", "--method", "minmax")
    assert result.returncode == 0, result.stderr
    assert "calibrated on 4 frames (diverse, minmax)" in result.stdout and out.is_file()
    too_many = run("model", "quantize", str(demo.model), str(out), "--calib", str(demo.video), "--every", "100",
                   "--count", "50")
    assert too_many.returncode == 1 and "8 usable frames, at least 50 needed" in too_many.stderr
    args = ["model", "evaluate", "--reference", str(demo.model), "--candidate", str(out),
            "--data", str(demo.video), "--every", "200", "--json", str(tmp_path / "r.json")]
    passed = run(*args, "--min-f1", "0.5")
    assert passed.returncode == 0, passed.stderr
    assert "-> PASS" in passed.stdout and json.loads((tmp_path / "r.json").read_text())["min_f1"] == 0.5
    failed = run(*args, "--min-f1", "0.999")
    assert failed.returncode == 1 and "-> FAIL" in failed.stdout and "worst classes" in failed.stdout


def test_cli_fp16(demo, tmp_path: Path) -> None:
    result = run("model", "fp16", str(demo.model), str(tmp_path / "h.onnx"), "--check", str(demo.image("dog.jpg")))
    assert result.returncode == 0, result.stderr
    assert "max |fp16 - fp32|" in result.stdout
    bad = run("model", "fp16", str(tmp_path / "none.onnx"), str(tmp_path / "h2.onnx"))
    assert bad.returncode == 1 and "ONNX file does not exist" in bad.stderr


def test_calibration_is_fed_in_bounded_chunks(demo, frames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime keeps all intermediate tensors of what it is fed at once: edge feeds small chunks.
    For minmax the chunked ranges equal the single-pass ranges exactly."""
    assert [quantize.chunk_size(n) for n in (1, 7, 8, 20, 100, 300, 37)] == [1, 7, 8, 5, 5, 6, 1]
    ranges = []
    original = quantize._Reader.set_range
    monkeypatch.setattr(quantize._Reader, "set_range", lambda self, start_index, end_index: (
        ranges.append((start_index, end_index)), original(self, start_index, end_index)))
    chunked = tmp_path / "chunked.onnx"
    quantize.quantize(demo.model, chunked, frames["calib"][:8], method="minmax", progress=False)
    assert ranges == [(0, 8)]
    ranges.clear()
    quantize.quantize(demo.model, chunked, frames["calib"][:6] + frames["held"][:4], method="minmax", progress=False)
    assert ranges == [(0, 5), (5, 10)]
    monkeypatch.setattr(quantize, "CHUNK_FRAMES", 1000)
    whole = tmp_path / "whole.onnx"
    quantize.quantize(demo.model, whole, frames["calib"][:6] + frames["held"][:4], method="minmax", progress=False)
    def scales(path: Path) -> dict[str, list[float]]:
        model = onnx.load(str(path))
        return {i.name: numpy_helper.to_array(i).tolist() for i in model.graph.initializer if i.name.endswith("_scale")}
    assert scales(chunked) == scales(whole)


def test_input_shape_mismatch(demo, frames, tmp_path: Path) -> None:
    gray = conv_model(tmp_path / "gray.onnx", input_shape=[1, 1, 64, 64], out_channels=4, stride=1)
    with pytest.raises(EngineError, match=r"the tools need a fixed \[1, 3, H, W\] image input"):
        quantize.quantize(gray, tmp_path / "q.onnx", frames["calib"][:1], progress=False)
    with pytest.raises(EngineError, match=r"the tools need a fixed \[1, 3, H, W\] image input"):
        fp16.convert(gray, tmp_path / "h.onnx", check_images=[frames["calib"][0].image])
    small = conv_model(tmp_path / "small.onnx", input_shape=[1, 3, 64, 64], out_channels=4, stride=1)
    with pytest.raises(EngineError, match=r"different inputs: \[1, 3, 416, 416\] and \[1, 3, 64, 64\]"):
        evaluate.evaluate(demo.model, small, frames["held"][:1], progress=False)
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "h.onnx").exists()


def test_two_quantize_runs_of_one_source_at_once(demo, frames, tmp_path: Path) -> None:
    """ONNX Runtime writes <model>-inferred.onnx beside the model it quantizes; two runs raced on it."""
    import concurrent.futures
    import shutil

    source = tmp_path / "src" / "yolo.onnx"
    source.parent.mkdir()
    shutil.copyfile(demo.model, source)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(quantize.quantize, source, tmp_path / f"out{i}.onnx", frames["calib"][:2],
                            method="minmax", progress=False) for i in range(2)]
        reports = [run.result(timeout=300) for run in runs]
    assert all(r.quantized_nodes > 0 for r in reports)
    assert sorted(p.name for p in source.parent.iterdir()) == ["yolo.onnx"]
    assert oct((tmp_path / "out0.onnx").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log(demo, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    from tests.support.daemon import ROOT, edge_cmd, env

    cmd = edge_cmd("model", "quantize", str(demo.model), str(tmp_path / "q.onnx"), "--calib",
                   str(demo.image("dog.jpg")), str(demo.image("person.jpg")), "--method", "minmax")
    logged = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert logged.returncode == 0, logged.stderr
    assert "calibrating on 2 frames (diverse, minmax) ..." in logged.stderr and "\r" not in logged.stderr
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))    # a terminal 100 columns wide
    with open(main, "rb", buffering=0) as terminal:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=child)
        os.close(child)
        shown = b""
        while chunk := _read_pty(terminal):
            shown += chunk
        assert proc.wait(timeout=120) == 0
    assert b"calibrating:" in shown and b"\r" in shown                  # tqdm's bar, redrawn in place


def _read_pty(terminal) -> bytes:
    try:
        return terminal.read(4096)
    except OSError:                      # EIO: the child closed its end
        return b""


def test_outputs_are_checked_before_the_work(demo, tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "x"
    for args, work_line in ((("model", "evaluate", "--reference", str(demo.model), "--candidate", str(demo.model),
                              "--data", str(demo.video), "--json", f"{missing}.json"), "evaluation set"),
                            (("model", "quantize", str(demo.model), f"{missing}.onnx", "--calib", str(demo.video)),
                             "calibration set"),
                            (("model", "fp16", str(demo.model), f"{missing}.onnx", "--check", str(demo.video)),
                             "--check data")):
        result = run(*args)
        assert result.returncode == 1 and f"output directory does not exist: {missing.parent}" in result.stderr
        assert work_line not in result.stderr, result.stderr          # refused before any frame was read

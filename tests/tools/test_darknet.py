"""Our Darknet->ONNX converter against an independent reference: OpenCV's own Darknet importer."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.errors import EngineError
from edge.letterbox import letterbox_into
from edge.tools import darknet


def _input(image_path: Path) -> np.ndarray:
    blob = np.zeros((1, 3, 416, 416), np.float32)
    letterbox_into(cv2.imread(str(image_path)), blob)
    return blob


@pytest.mark.parametrize("image", ["dog.jpg", "person.jpg", "vtest"])
def test_raw_heads_match_opencv_darknet_importer(demo, image: str) -> None:
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.fail("the test environment needs opencv-python-headless<5 (OpenCV 5 dropped the Darknet importer)")
    if image == "vtest":
        ok, frame = cv2.VideoCapture(str(demo.video)).read()
        blob = np.zeros((1, 3, 416, 416), np.float32)
        letterbox_into(frame, blob)
    else:
        blob = _input(demo.image(image))
    models = demo.root / "models"
    net = cv2.dnn.readNetFromDarknet(str(models / "yolov3-tiny.cfg"), str(models / "yolov3-tiny.weights"))
    net.setInput(blob)
    reference = net.forward(["conv_15", "conv_22"])        # the linear convs feeding the two [yolo] layers
    ours = ort.InferenceSession(str(demo.model)).run(None, {"images": blob})
    for mine, theirs in zip(ours, reference):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, atol=1e-3, rtol=0)
        assert np.abs(theirs).max() > 5          # real activations, not an all-zero agreement


def test_model_structure_and_metadata(demo) -> None:
    model = onnx.load(str(demo.model))
    onnx.checker.check_model(model)
    ops = sorted({n.op_type for n in model.graph.node})
    assert ops == ["Concat", "Conv", "Identity", "LeakyRelu", "MaxPool", "Resize"]
    assert [o.name for o in model.graph.output] == ["yolo0_13x13", "yolo1_26x26"]
    props = {p.key: p.value for p in model.metadata_props}
    assert '"anchors": [[[81, 82], [135, 169], [344, 319]], [[10, 14], [23, 27], [37, 58]]]' in props["edge.yolo"]


def test_conversion_is_deterministic(demo, tmp_path: Path) -> None:
    models = demo.root / "models"
    out = tmp_path / "again.onnx"
    darknet.convert(models / "yolov3-tiny.cfg", models / "yolov3-tiny.weights", models / "coco.names", out)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(out) == digest(demo.model)
    assert not list(tmp_path.glob("*.tmp"))


def test_weights_that_do_not_fit_the_cfg(demo, tmp_path: Path) -> None:
    models = demo.root / "models"
    short = tmp_path / "short.weights"
    short.write_bytes((models / "yolov3-tiny.weights").read_bytes()[:1_000_000])
    with pytest.raises(EngineError, match="end early") as info:
        darknet.convert(models / "yolov3-tiny.cfg", short, models / "coco.names", tmp_path / "x.onnx")
    assert "do not belong together" in str(info.value)
    assert not (tmp_path / "x.onnx").exists()


def test_unsupported_layer_and_bad_cfg(demo, tmp_path: Path) -> None:
    models = demo.root / "models"
    cfg = tmp_path / "bad.cfg"
    cfg.write_text((models / "yolov3-tiny.cfg").read_text().replace("[upsample]", "[shortcut]"))
    with pytest.raises(EngineError, match=r"\[shortcut\] is not supported"):
        darknet.convert(cfg, models / "yolov3-tiny.weights", models / "coco.names", tmp_path / "x.onnx")
    cfg.write_text("width=416\n")
    with pytest.raises(EngineError, match="must start with a \\[net\\] section"):
        darknet.parse_cfg(cfg.read_text())


def test_missing_inputs_and_a_cfg_without_its_keys_are_clear_errors(demo, tmp_path: Path) -> None:
    """`edge model darknet2onnx` with a missing file, or a [net] without height, ended in a traceback."""
    models = demo.root / "models"
    inputs = {"cfg": models / "yolov3-tiny.cfg", "weights": models / "yolov3-tiny.weights",
              "names file": models / "coco.names"}
    for what in inputs:
        given = dict(inputs, **{what: tmp_path / "missing"})
        with pytest.raises(EngineError, match=f"cannot read the Darknet {what} {tmp_path}/missing: No such file"):
            darknet.convert(given["cfg"], given["weights"], given["names file"], tmp_path / "x.onnx")
    cfg = tmp_path / "no-height.cfg"
    cfg.write_text((models / "yolov3-tiny.cfg").read_text().replace("height=416", ""))
    with pytest.raises(EngineError, match="cannot be converted: KeyError: 'height'") as info:
        darknet.convert(cfg, inputs["weights"], inputs["names file"], tmp_path / "x.onnx")
    assert "needs width and height" in str(info.value) and not (tmp_path / "x.onnx").exists()

"""The detector task on the real demo model: known content of the Darknet test images, letterbox, NMS."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config.schema import TaskConfig
from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.errors import EngineError
from edge.letterbox import Letterbox, letterbox_into
from edge.tasks import build_task
from edge.tasks.detector import YoloDetector, nms
from tests.support.lanes import YOLO
from tests.support.models import conv_model

CONFIG = TaskConfig(name="objects", type="detector", model="unused.onnx", cameras=["c"])


Found = list[tuple[str, float, list[float]]]


def detect(engine: OnnxRuntimeEngine, image: np.ndarray, config: TaskConfig = CONFIG) -> Found:
    task = build_task(config, engine)
    slot = engine.create_slot("test", depth=1)
    buf = slot.input()
    meta = task.preprocess(image, buf)
    rows = task.postprocess(slot.submit(buf).wait(), meta)
    slot.close()
    return [(task.labels[int(r[5])], float(r[4]), r[:4].tolist()) for r in rows]


@pytest.fixture(scope="module")
def engine(demo):
    with OnnxRuntimeEngine(demo.model) as active:
        yield active


def test_dog_jpg_known_content(engine, demo) -> None:
    found = detect(engine, cv2.imread(str(demo.image("dog.jpg"))))
    names = {name for name, _, _ in found}
    assert {"dog", "bicycle"} <= names and names & {"car", "truck"}
    dog = next(box for name, _, box in found if name == "dog")
    assert 100 < dog[0] < 160 and 480 < dog[3] < 560           # the dog sits bottom-left in the 768x576 image


def test_person_jpg_known_content(engine, demo) -> None:
    names = {name for name, score, _ in detect(engine, cv2.imread(str(demo.image("person.jpg")))) if score > 0.5}
    assert {"person", "dog", "horse"} <= names


def test_boxes_are_in_source_pixels_and_inside_the_frame(engine, demo) -> None:
    image = cv2.imread(str(demo.image("kite.jpg")))             # 1352x900: a strong letterbox (x0.31, 69 px bars)
    found = detect(engine, image)
    h, w = image.shape[:2]
    for _, score, (x1, y1, x2, y2) in found:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and 0.3 <= score <= 1
    kite = max((item for item in found if item[0] == "kite"), key=lambda item: item[1])[2]
    assert 600 < kite[0] < kite[2] < 670 and 80 < kite[1] < kite[3] < 150       # high up, in the middle
    people = [box for name, _, box in found if name == "person"]
    assert people and all(box[2] < 300 and box[1] > 600 for box in people)      # on the beach, bottom left
    half = detect(engine, cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    assert sorted(name for name, _, _ in half) == sorted(name for name, _, _ in found)
    by_place = lambda items: sorted(items, key=lambda item: (item[0], item[2][0]))  # noqa: E731
    for (name, _, box), (_, _, box_half) in zip(by_place(found), by_place(half)):
        np.testing.assert_allclose(np.array(box_half) * 2, box, atol=6, err_msg=name)   # same scene, half the pixels


def test_threshold_and_max_detections(engine, demo) -> None:
    image = cv2.imread(str(demo.image("dog.jpg")))
    strict = CONFIG.model_copy(update={"params": CONFIG.params.model_copy(update={"conf_threshold": 0.6})})
    assert all(score >= 0.6 for _, score, _ in detect(engine, image, strict))
    capped = CONFIG.model_copy(update={"params": CONFIG.params.model_copy(update={"max_detections": 2})})
    assert len(detect(engine, image, capped)) == 2


def test_letterbox_geometry_and_fill() -> None:
    image = np.full((576, 768, 3), (0, 0, 255), np.uint8)         # pure red in BGR
    out = np.zeros((1, 3, 416, 416), np.float32)
    box = letterbox_into(image, out)
    assert (box.width, box.height, box.left, box.top) == (416, 312, 0, 52)
    assert out[0, :, 0, 0].tolist() == [0.5, 0.5, 0.5]          # padding is Darknet grey
    assert out[0, :, 200, 200].tolist() == [1.0, 0.0, 0.0]       # RGB order, 0..1
    back = box.to_source(np.array([[0, 52, 416, 364]], np.float32))
    np.testing.assert_allclose(back, [[0, 0, 768, 576]], atol=1e-3)


@pytest.mark.parametrize("height,width", [(576, 768), (768, 576), (33, 100), (100, 33), (416, 416)])
def test_letterbox_fills_every_pad_and_only_the_pads(height: int, width: int) -> None:
    """Bars top and bottom (wide image) or left and right (tall one), also when they differ by a row."""
    image = np.full((height, width, 3), (0, 0, 255), np.uint8)
    out = np.full((1, 3, 416, 416), 7.0, np.float32)               # stale data from the previous frame
    box = letterbox_into(image, out)
    inside = np.zeros((416, 416), bool)
    inside[box.top:box.top + box.height, box.left:box.left + box.width] = True
    assert inside.sum() == box.width * box.height and max(box.width, box.height) == 416
    assert (out[0][:, ~inside] == 0.5).all()
    assert (out[0][:, inside] == np.array([[1.0], [0.0], [0.0]], np.float32)).all()


def test_letterbox_rejects_wrong_image() -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        letterbox_into(np.zeros((10, 10), np.uint8), np.zeros((1, 3, 32, 32), np.float32))


def test_letterbox_fit_tall_image() -> None:
    assert Letterbox.fit(100, 400, 416, 416) == Letterbox(1.04, 156, 0, 104, 416, 100, 400)


def test_nms_keeps_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.45).tolist() == [0, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.95).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """The detector for a real one-head model: input 64x64, 3 anchors, 2 classes, head [1, 21, 2, 2]."""
    path = conv_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", input_shape=[1, 3, 64, 64], out_channels=21,
                      stride=32, yolo_meta=YOLO)
    with OnnxRuntimeEngine(path) as engine:
        return build_task(CONFIG, engine)


def head(*boxes: tuple[int, int, int, float, int], grid: tuple[int, int] = (2, 2), size: float = 20,
         offset: tuple[float, float] = (0.0, 0.0), class_logit: float = 20.0) -> dict[str, np.ndarray]:
    """Raw head output with one `size`-px square box per (anchor, row, col, objectness logit, class); all else
    empty. `offset` are the tx, ty logits (0: the cell's centre)."""
    raw = np.full((1, 3, 7, *grid), -20.0, np.float32)               # (anchor, tx ty tw th obj c0 c1, row, col)
    for anchor, row, col, objectness, cls in boxes:
        aw, ah = YOLO["anchors"][0][anchor]
        raw[0, anchor, :5, row, col] = [*offset, np.log(size / aw), np.log(size / ah), objectness]
        raw[0, anchor, 5 + cls, row, col] = class_logit
    return {"out0": raw.reshape(1, 21, *grid)}


def sigmoid(x: float) -> float:
    return 1 / (1 + np.exp(-x))


def test_decode_places_boxes_by_cell_and_anchor(tiny) -> None:
    found = tiny.postprocess(head((0, 0, 1, 3.0, 0), (2, 1, 0, 2.0, 1)), Letterbox.fit(64, 64, 64, 64))
    assert found.dtype == np.float32
    np.testing.assert_allclose(found, [[38, 6, 58, 26, sigmoid(3.0), 0],         # row 0, col 1: centre (48, 16)
                                       [6, 38, 26, 58, sigmoid(2.0), 1]], atol=1e-4)  # row 1, col 0: centre (16, 48)
    shifted = tiny.postprocess(head((0, 1, 0, 3.0, 0), offset=(1.0, -1.0)), Letterbox.fit(64, 64, 64, 64))
    cx, cy = (0 + sigmoid(1.0)) * 32, (1 + sigmoid(-1.0)) * 32                   # tx moves x, ty moves y
    np.testing.assert_allclose(shifted[0, :4], [cx - 10, cy - 10, cx + 10, cy + 10], atol=1e-4)


def test_decode_on_a_grid_that_is_not_square(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "wide.onnx", input_shape=[1, 3, 64, 96], out_channels=21, stride=32,
                      yolo_meta=YOLO)
    with OnnxRuntimeEngine(path) as engine:
        wide = build_task(CONFIG, engine)
    found = wide.postprocess(head((0, 1, 2, 3.0, 1), grid=(2, 3)), Letterbox.fit(96, 64, 96, 64))
    np.testing.assert_allclose(found[:, :4], [[70, 38, 90, 58]], atol=1e-4)   # row 1, col 2: centre (80, 48)


def test_nothing_found(tiny) -> None:
    found = tiny.postprocess(head(), Letterbox.fit(64, 64, 64, 64))
    assert found.shape == (0, 6) and found.dtype == np.float32


def test_confidence_must_exceed_the_threshold(tiny) -> None:
    """At 0.5: objectness 0.5 (logit 0) or class 0.5 (logit 0, objectness 1.0) is not enough."""
    strict = YoloDetector(input_shape=tiny.input_shape, heads=tiny.heads, labels=tiny.labels,
                          params=tiny.params.model_copy(update={"conf_threshold": 0.5}))
    meta = Letterbox.fit(64, 64, 64, 64)
    assert strict.postprocess(head((0, 0, 0, 0.0, 0)), meta).shape == (0, 6)
    assert strict.postprocess(head((0, 0, 0, 30.0, 0), class_logit=0.0), meta).shape == (0, 6)
    assert strict.postprocess(head((0, 0, 0, 30.0, 0), class_logit=0.01), meta).shape == (1, 6)


def test_nms_is_class_wise(tiny) -> None:
    """Two anchors of one cell find the same 20x20 box (IoU 1): one class keeps one box, two classes keep both."""
    meta = Letterbox.fit(64, 64, 64, 64)
    same = tiny.postprocess(head((0, 0, 0, 3.0, 1), (1, 0, 0, 2.0, 1)), meta)
    np.testing.assert_allclose(same[:, 4:], [[sigmoid(3.0), 1]], atol=1e-4)   # the better one
    both = tiny.postprocess(head((0, 0, 0, 3.0, 0), (1, 0, 0, 2.0, 1)), meta)
    assert both[:, 5].tolist() == [0, 1]
    np.testing.assert_allclose(both[:, :4], [[6, 6, 26, 26]] * 2, atol=1e-4)
    big = tiny.postprocess(head((0, 0, 0, 3.0, 0), (1, 0, 0, 2.0, 1), size=120), meta)   # larger than the input
    assert big[:, 5].tolist() == [0, 1]


def test_nms_keeps_what_does_not_overlap_and_suppresses_at_more_than_iou() -> None:
    tiny_boxes = np.array([[0, 0, 1, 1], [2, 0, 3, 1], [0, 2, 1, 3], [4, 4, 4.5, 4.5], [4, 4, 4.5, 4.5]], np.float32)
    assert nms(tiny_boxes, np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32), 0.45).tolist() == [0, 1, 2, 3]
    half = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)                     # IoU exactly 0.5
    assert nms(half, np.array([0.9, 0.8], np.float32), 0.5).tolist() == [0, 1]
    assert nms(half, np.array([0.9, 0.8], np.float32), 0.49).tolist() == [0]


def test_boxes_map_back_through_the_letterbox(tiny) -> None:
    """A 128x64 frame sits in the 64x64 input at scale 0.5 with 16-px bars above and below."""
    found = tiny.postprocess(head((0, 1, 1, 3.0, 0)), Letterbox.fit(128, 64, 64, 64))
    np.testing.assert_allclose(found[:, :4], [[76, 44, 116, 64]], atol=1e-4)   # (38..58, 38..58) - bar, x2, clipped


def test_model_without_yolo_metadata_is_refused(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "plain.onnx", input_shape=[1, 3, 64, 64], out_channels=8, stride=1)
    with OnnxRuntimeEngine(path) as engine, pytest.raises(EngineError, match="no `edge.yolo` metadata") as info:
        build_task(CONFIG, engine)
    assert "Hint: convert Darknet models with `edge model darknet2onnx`, which embeds it" in str(info.value)


@pytest.mark.parametrize("meta,problem", [
    ({"anchors": [[[10, 14]]], "strides": [32, 16], "labels": ["a"]}, "anchors and strides differ in length"),
    ({"anchors": [[[10, 14]]], "strides": [32], "labels": "a"}, "anchors and strides differ in length"),
    ({"anchors": [[[10, 14]]], "labels": ["a"]}, "'strides'"),
])
def test_malformed_yolo_metadata_is_refused(tmp_path: Path, meta: dict, problem: str) -> None:
    path = conv_model(tmp_path / "m.onnx", input_shape=[1, 3, 64, 64], out_channels=6, stride=32, yolo_meta=meta)
    with OnnxRuntimeEngine(path) as engine, pytest.raises(EngineError) as info:
        build_task(CONFIG, engine)
    assert str(info.value) == f"model {path} has malformed `edge.yolo` metadata: {problem}"


def test_model_input_shape_not_matching_the_task(tmp_path: Path) -> None:
    meta = {"anchors": [[[10, 14], [23, 27], [37, 58]]], "strides": [32], "labels": ["a", "b"]}
    gray = conv_model(tmp_path / "gray.onnx", input_shape=[1, 1, 64, 64], out_channels=21, stride=32, yolo_meta=meta)
    with OnnxRuntimeEngine(gray) as engine, pytest.raises(EngineError) as info:
        build_task(CONFIG, engine)
    assert str(info.value) == ("task 'objects': model input images is float32 [1, 1, 64, 64]; the detector needs"
                               f" float32 [1, 3, H, W]\nNote: model: {gray}")
    batch = conv_model(tmp_path / "batch.onnx", input_shape=[2, 3, 64, 64], out_channels=21, stride=32,
                       yolo_meta=meta)
    with OnnxRuntimeEngine(batch) as engine, pytest.raises(EngineError, match=r"needs float32 \[1, 3, H, W\]"):
        build_task(CONFIG, engine)
    wrong = conv_model(tmp_path / "wrong.onnx", input_shape=[1, 3, 64, 64], out_channels=20, stride=32, yolo_meta=meta)
    with OnnxRuntimeEngine(wrong) as engine, pytest.raises(EngineError, match=r"expected \[1, 21, 2, 2\]") as info:
        build_task(CONFIG, engine)
    assert str(info.value).endswith(f"\nNote: model: {wrong}\nHint: the labels file must match the model's classes")
    heads = conv_model(tmp_path / "heads.onnx", input_shape=[1, 3, 64, 64], out_channels=21, stride=32,
                       yolo_meta=meta, n_outputs=2)
    with OnnxRuntimeEngine(heads) as engine, pytest.raises(EngineError, match="2 outputs but its metadata") as info:
        build_task(CONFIG, engine)
    assert str(info.value).endswith(f"describes 1 YOLO heads\nNote: model: {heads}")


def test_labels_file_must_match_class_count(tmp_path: Path, engine) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    config = CONFIG.model_copy(update={"params": CONFIG.params.model_copy(update={"labels": str(labels)})})
    with pytest.raises(EngineError, match="lists 2 classes, the model has 80"):
        build_task(config, engine)
    missing = config.model_copy(update={"params": config.params.model_copy(update={"labels": str(tmp_path / "no")})})
    with pytest.raises(EngineError) as info:
        build_task(missing, engine)
    assert str(info.value) == f"cannot read labels file {tmp_path / 'no'}: No such file or directory"


def test_the_detector_names_its_preprocessing_and_pads_with_its_fill(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The letterbox a TensorRT slot runs for the detector on the GPU is the one it names, and its CPU path pads
    with that same fill (one definition of the grey)."""
    from edge.engines.base import LetterboxPreprocessing
    from edge.tasks import preprocessing_of

    assert preprocessing_of(CONFIG) == LetterboxPreprocessing(fill=0.5) == YoloDetector.preprocessing
    task = build_task(CONFIG, engine)
    monkeypatch.setattr(YoloDetector, "preprocessing", LetterboxPreprocessing(fill=0.25))
    out = np.zeros(engine.inputs[0].shape, np.float32)
    box = task.preprocess(np.zeros((100, 400, 3), np.uint8), out)
    assert box.top > 0 and (out[0, :, :box.top] == 0.25).all()
    rows = np.zeros((2, *engine.inputs[0].shape[1:]), np.float32)
    boxes = task.preprocess_batch([np.zeros((100, 400, 3), np.uint8)], rows)
    assert (rows[0, :, :boxes[0].top] == 0.25).all() and (rows[1] == 0).all()

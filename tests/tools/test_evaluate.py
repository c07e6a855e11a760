"""The accuracy gate's arithmetic on hand-made detections: matching, tp/fp/fn, F1, AP, the verdict.

The models are not run here (tests/tools/test_tools.py runs the real ones): the candidate's detections are
given to `score`, so every count and score below is worked out by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.tools import evaluate
from edge.tools.data import Sample


def boxes(*rows: tuple[float, ...]) -> np.ndarray:
    """Detections [N, 6]: x1, y1, x2, y2, score, class."""
    return np.array(rows, np.float32).reshape(-1, 6)


# Reference ("truth") and candidate detections on two frames, worked out by hand:
#   frame a: t1 (class 0) found (c1); t2 (class 1) found as class 0 (c2: fp for 0, fn for 1);
#            t3 (class 0) found only at 0.2, under the 0.3 threshold (fn; a hit when ranking for AP);
#            c4 overlaps t1, which c1 already matched (fp)
#   frame b: t4 and t5 (class 1) found (c5, c6); c7 finds nothing (fp)
#   class 0: tp 1, fp 2, fn 1 -> F1 2/5;  class 1: tp 2, fp 1, fn 1 -> F1 4/6;  all: tp 3, fp 3, fn 2 -> F1 6/11
TRUTH = [boxes((0, 0, 10, 10, .9, 0), (20, 20, 40, 40, .9, 1), (50, 50, 60, 60, .9, 0)),
         boxes((0, 0, 10, 10, .9, 1), (30, 30, 50, 50, .9, 1))]
CANDIDATE = [boxes((0, 0, 10, 10, .95, 0), (20, 20, 40, 40, .8, 0), (50, 50, 60, 60, .2, 0), (1, 1, 11, 11, .6, 0)),
             boxes((0, 0, 10, 10, .7, 1), (30, 30, 50, 50, .5, 1), (70, 70, 80, 80, .4, 1))]
SAMPLES = [Sample("a.jpg", np.zeros((1, 1, 3), np.uint8)), Sample("b.jpg", np.zeros((1, 1, 3), np.uint8))]


def score(truth: list[np.ndarray], candidate: list[np.ndarray], samples: list[Sample] = SAMPLES,
          labels: tuple[str, ...] = ("zero", "one"), **threshold: float) -> dict:
    return evaluate.score(truth, candidate, samples, list(labels), **threshold)   # by default 0.3


def test_counts_f1_precision_recall() -> None:
    report = score(TRUTH, CANDIDATE)
    assert (report["frames"], report["tp"], report["fp"], report["fn"]) == (2, 3, 3, 2)
    assert report["f1"] == round(6 / 11, 4)                      # 2tp / (2tp + fp + fn)
    assert (report["precision"], report["recall"]) == (0.5, 0.6)
    assert [(c["class"], c["tp"], c["fp"], c["fn"], c["f1"]) for c in report["worst_classes"]] == [
        ("zero", 1, 2, 1, 0.4), ("one", 2, 1, 1, round(4 / 6, 4))]
    assert report["worst_frames"] == [{"frame": "a.jpg", "missed": 2, "extra": 2, "reference": 3},
                                      {"frame": "b.jpg", "missed": 0, "extra": 1, "reference": 2}]


def test_ap50_per_class_and_map() -> None:
    """Class 0 ranked: hit .95, miss .8, miss .6, hit .2 of 2 -> AP 0.5*1 + 0.5*0.5 = 0.75.
    Class 1 ranked: hit .7, hit .5, miss .4 of 3 -> AP 1/3 + 1/3 = 2/3."""
    report = score(TRUTH, CANDIDATE)
    assert {c["class"]: c["ap50"] for c in report["worst_classes"]} == {"zero": 0.75, "one": round(2 / 3, 4)}
    assert report["map50"] == round((0.75 + 2 / 3) / 2, 4)


def test_report_text() -> None:
    text = evaluate.format_report(score(TRUTH, CANDIDATE), reference=Path("fp32.onnx"), candidate=Path("int8.onnx"),
                                  min_f1=0.9)
    assert text.split("\n") == [
        "candidate int8.onnx against reference fp32.onnx on 2 frames:",
        "  F1 0.5455  precision 0.5000  recall 0.6000  mAP@0.5 0.7083  (matched 3, missed 2, extra 3)",
        "  worst classes (F1, matched/missed/extra, AP50):",
        "    zero           0.400  1/1/2  0.75",
        "    one            0.667  2/1/1  0.6667",
        "  worst frames (missed/extra of reference count):",
        "    a.jpg  2/2 of 3",
        "    b.jpg  0/1 of 2",
        "  gate: F1 0.5455 < 0.9 -> FAIL"]


def test_threshold_includes_a_score_equal_to_it() -> None:
    """At 0.5: c1, c5 and c6 (score exactly 0.5) match, c2 and c4 are extra, t2 and t3 missed."""
    report = score(TRUTH, CANDIDATE, conf_threshold=0.5)
    assert (report["tp"], report["fp"], report["fn"], report["f1"]) == (3, 2, 2, 0.6)


def test_counts_add_up_over_frames() -> None:
    frame = boxes((0, 0, 10, 10, .9, 0), (40, 40, 50, 50, .9, 1))
    found = boxes((0, 0, 10, 10, .9, 0), (20, 20, 30, 30, .9, 0))     # class 1 missed, one extra of class 0
    report = score([frame, frame], [found, found])
    assert [(c["class"], c["tp"], c["fp"], c["fn"]) for c in report["worst_classes"]] == [
        ("one", 0, 0, 2), ("zero", 2, 2, 0)]


def test_missed_detections_pull_f1_down_and_the_gate_refuses() -> None:
    """A variant that finds 4 of 21 boxes (and 3 that are not there) is precise but useless: F1 8/28."""
    truth = [boxes(*[(10 * i, 0, 10 * i + 8, 8, .9, 0) for i in range(21)])]
    found = [np.concatenate([truth[0][:4], boxes(*[(10 * i, 50, 10 * i + 8, 58, .9, 0) for i in range(3)])])]
    report = score(truth, found, SAMPLES[:1])
    assert (report["tp"], report["fp"], report["fn"]) == (4, 3, 17)
    assert (report["precision"], report["recall"], report["f1"]) == (round(4 / 7, 4), round(4 / 21, 4), 0.2857)
    text = evaluate.format_report(report, reference=Path("fp32.onnx"), candidate=Path("int8.onnx"), min_f1=0.9)
    assert text.endswith("gate: F1 0.2857 < 0.9 -> FAIL")


def test_one_box_found_exactly_is_perfect() -> None:
    truth = [boxes((0, 0, 10, 10, .9, 0))]
    report = score(truth, truth, SAMPLES[:1])
    assert {k: report[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1", "map50")} == {
        "tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "map50": 1.0}


def test_gate_passes_at_its_threshold() -> None:
    report = score(TRUTH, TRUTH)                                         # the reference against itself
    assert (report["tp"], report["fp"], report["fn"], report["f1"], report["map50"]) == (5, 0, 0, 1.0, 1.0)
    text = evaluate.format_report(report, reference=Path("a"), candidate=Path("b"), min_f1=1.0)
    assert text.endswith("gate: F1 1.0000 >= 1.0 -> PASS")
    assert "gate" not in evaluate.format_report(report, reference=Path("a"), candidate=Path("b"), min_f1=None)


def test_classes_found_by_one_side_only() -> None:
    """A class the candidate never finds has AP 0 and counts in mAP; one only the candidate finds has no AP;
    with nothing in the reference there is no mAP."""
    truth = [boxes((0, 0, 10, 10, .9, 0), (20, 20, 30, 30, .9, 1))]
    found = [boxes((0, 0, 10, 10, .9, 0))]
    report = score(truth, found, SAMPLES[:1])
    assert {c["class"]: c["ap50"] for c in report["worst_classes"]} == {"zero": 1.0, "one": 0.0}
    assert report["map50"] == 0.5
    nothing = score([boxes()], found, SAMPLES[:1])
    assert (nothing["tp"], nothing["fp"], nothing["fn"], nothing["f1"], nothing["map50"]) == (0, 1, 0, 0.0, None)
    assert [(c["class"], c["ap50"]) for c in nothing["worst_classes"]] == [("zero", None)]


def test_worst_lists_are_worst_first_and_capped() -> None:
    """12 frames; frame i holds i + 1 boxes of class i, none found, and frame 0 also 20 extra detections.
    Worst frames by missed + extra; worst classes by F1 (all 0 here), then the bigger class first."""
    samples = [Sample(f"f{i}", np.zeros((1, 1, 3), np.uint8)) for i in range(12)]
    truth = [boxes(*[(10 * j, 0, 10 * j + 8, 8, .9, i) for j in range(i + 1)]) for i in range(12)]
    found = [boxes(*[(10 * j, 50, 10 * j + 8, 58, .9, 0) for j in range(20)])] + [boxes()] * 11
    report = score(truth, found, samples, tuple(f"c{i}" for i in range(12)))
    assert [(f["frame"], f["missed"], f["extra"]) for f in report["worst_frames"]] == [("f0", 1, 20)] + [
        (f"f{i}", i + 1, 0) for i in range(11, 2, -1)]
    assert [c["class"] for c in report["worst_classes"]] == [f"c{i}" for i in range(11, 1, -1)]
    lines = evaluate.format_report(report, reference=Path("a"), candidate=Path("b"), min_f1=None).split("\n")
    assert len(lines) == 3 + 5 + 1 + 5                                    # five of each in the text


def test_evaluate_against_ranks_the_candidate_down_to_the_rank_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def detect_all(model: Path, samples: list[Sample], threshold: float, desc: str, progress: bool):
        calls.append((model, samples, threshold, desc, progress))
        return CANDIDATE, ["zero", "one"]
    monkeypatch.setattr(evaluate, "_detect_all", detect_all)
    report = evaluate.evaluate_against(TRUTH, ["zero", "one"], Path("int8.onnx"), SAMPLES)
    assert calls == [(Path("int8.onnx"), SAMPLES, evaluate.RANK_THRESHOLD, "candidate", True)]
    assert report == score(TRUTH, CANDIDATE)                               # default threshold 0.3
    strict = evaluate.evaluate_against(TRUTH, ["zero", "one"], Path("int8.onnx"), SAMPLES, conf_threshold=0.5,
                                       progress=False)
    assert strict == score(TRUTH, CANDIDATE, conf_threshold=0.5) and calls[-1][-1] is False
    assert evaluate.candidate_detections(Path("int8.onnx"), SAMPLES) == CANDIDATE and calls[-1][-1] is True


def test_match_is_greedy_by_score_best_iou_one_truth_each() -> None:
    truth = boxes((0, 0, 10, 10, .9, 0), (0, 0, 10, 12, .9, 0), (20, 0, 30, 10, .9, 1))
    found = boxes((20, 0, 30, 10, .5, 0),       # the class-1 box, called class 0: no match
                  (0, 0, 10, 10, .6, 0),        # identical to the first truth box, but both are taken by then
                  (0, 0, 10, 5.5, .7, 0),       # IoU .55 with the first truth box only: gets it
                  (0, 0, 10, 12, .8, 0),        # IoU .83 and 1.0: takes its best, the second
                  (20, 0, 30, 4, .9, 1))        # right class, IoU 0.4: no match
    assert evaluate.match(truth, found).tolist() == [False, False, True, True, False]
    assert evaluate.match(truth[2:], boxes((20, 0, 30, 5, .9, 1))).tolist() == [True]     # IoU exactly 0.5


def test_iou_matrix() -> None:
    a = boxes((0, 0, 10, 10, 1, 0), (0, 0, 4, 4, 1, 0))[:, :4]
    b = boxes((5, 0, 15, 10, 1, 0), (20, 20, 30, 30, 1, 0))[:, :4]
    np.testing.assert_allclose(evaluate.iou_matrix(a, b), [[50 / 150, 0], [0, 0]])
    assert evaluate.iou_matrix(a, b[:0]).shape == (2, 0)
    c = boxes((2, 1, 6, 9, 1, 0))[:, :4]                     # x and y differ in every box from here on
    d = boxes((4, 3, 10, 5, 1, 0), (0, 20, 10, 30, 1, 0), (2, 1, 2.5, 1.5, 1, 0))[:, :4]
    np.testing.assert_allclose(evaluate.iou_matrix(c, d), [[4 / 40, 0, 0.25 / 32]], rtol=1e-6)   # 2nd: x only
    np.testing.assert_allclose(evaluate.iou_matrix(d, c), evaluate.iou_matrix(c, d).T, rtol=1e-6)   # symmetric
    np.testing.assert_allclose(evaluate.iou_matrix(d[2:], d[2:]), [[1.0]])    # a box smaller than a pixel


def test_average_precision_edges() -> None:
    assert np.isnan(evaluate.average_precision(np.array([0.5]), np.array([True]), 0))
    assert evaluate.average_precision(np.array([0.9, 0.8]), np.array([False, False]), 2) == 0.0
    assert evaluate.average_precision(np.array([0.9, 0.8]), np.array([True, True]), 4) == 0.5
    assert evaluate.average_precision(np.array([0.9]), np.array([True]), 1) == 1.0

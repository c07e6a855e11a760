"""The accuracy gate's arithmetic on hand-made detections: matching, tp/fp/fn, F1, AP, the verdict.

The models are not run here (tests/test_tools.py runs the real ones): the candidate's detections are
given, so every count and score below is worked out by hand."""
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


def report_for(monkeypatch: pytest.MonkeyPatch, truth: list[np.ndarray], candidate: list[np.ndarray],
               samples: list[Sample]) -> dict:
    """evaluate_against with the candidate's detections given instead of computed."""
    def detect_all(model: Path, given: list[Sample], threshold: float, desc: str, progress: bool):
        assert given == samples and threshold == evaluate.RANK_THRESHOLD
        return candidate, ["zero", "one"]
    monkeypatch.setattr(evaluate, "_detect_all", detect_all)
    return evaluate.evaluate_against(truth, ["zero", "one"], Path("candidate.onnx"), samples, conf_threshold=0.3,
                                     progress=False)


def test_counts_f1_precision_recall(monkeypatch: pytest.MonkeyPatch) -> None:
    report = report_for(monkeypatch, TRUTH, CANDIDATE, SAMPLES)
    assert (report["frames"], report["tp"], report["fp"], report["fn"]) == (2, 3, 3, 2)
    assert report["f1"] == round(6 / 11, 4)                      # 2tp / (2tp + fp + fn)
    assert (report["precision"], report["recall"]) == (0.5, 0.6)
    assert [(c["class"], c["tp"], c["fp"], c["fn"], c["f1"]) for c in report["worst_classes"]] == [
        ("zero", 1, 2, 1, 0.4), ("one", 2, 1, 1, round(4 / 6, 4))]
    assert report["worst_frames"] == [{"frame": "a.jpg", "missed": 2, "extra": 2, "reference": 3},
                                      {"frame": "b.jpg", "missed": 0, "extra": 1, "reference": 2}]


def test_ap50_per_class_and_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """Class 0 ranked: hit .95, miss .8, miss .6, hit .2 of 2 -> AP 0.5*1 + 0.5*0.5 = 0.75.
    Class 1 ranked: hit .7, hit .5, miss .4 of 3 -> AP 1/3 + 1/3 = 2/3."""
    report = report_for(monkeypatch, TRUTH, CANDIDATE, SAMPLES)
    assert {c["class"]: c["ap50"] for c in report["worst_classes"]} == {"zero": 0.75, "one": round(2 / 3, 4)}
    assert report["map50"] == round((0.75 + 2 / 3) / 2, 4)


def test_missed_detections_pull_f1_down_and_the_gate_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variant that finds 4 of 20 boxes, all right, is precise but useless: F1 8/24, not 1.0."""
    truth = [boxes(*[(10 * i, 0, 10 * i + 8, 8, .9, 0) for i in range(20)])]
    found = [truth[0][:4].copy()]
    report = report_for(monkeypatch, truth, found, SAMPLES[:1])
    assert (report["tp"], report["fp"], report["fn"]) == (4, 0, 16)
    assert (report["precision"], report["recall"], report["f1"]) == (1.0, 0.2, round(8 / 24, 4))
    text = evaluate.format_report(report, reference=Path("fp32.onnx"), candidate=Path("int8.onnx"), min_f1=0.9)
    assert text.endswith("gate: F1 0.3333 < 0.9 -> FAIL")
    assert "(matched 4, missed 16, extra 0)" in text


def test_gate_passes_at_its_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    report = report_for(monkeypatch, TRUTH, TRUTH, SAMPLES)              # the reference against itself
    assert (report["tp"], report["fp"], report["fn"], report["f1"], report["map50"]) == (5, 0, 0, 1.0, 1.0)
    text = evaluate.format_report(report, reference=Path("a"), candidate=Path("b"), min_f1=1.0)
    assert text.endswith("gate: F1 1.0000 >= 1.0 -> PASS")
    assert "gate" not in evaluate.format_report(report, reference=Path("a"), candidate=Path("b"), min_f1=None)


def test_match_is_greedy_by_score_best_iou_one_truth_each() -> None:
    truth = boxes((0, 0, 10, 10, .9, 0), (0, 0, 10, 12, .9, 0), (20, 0, 30, 10, .9, 1))
    found = boxes((20, 0, 30, 10, .5, 0),       # the class-1 box, called class 0: no match
                  (0, 0, 10, 10, .6, 0),        # identical to the first truth box, but both are taken by then
                  (0, 0, 10, 5.5, .7, 0),       # IoU .55 with the first truth box only: gets it
                  (0, 0, 10, 12, .8, 0),        # IoU .83 and 1.0: takes its best, the second
                  (20, 0, 30, 4, .9, 1))        # right class, IoU 0.4: no match
    assert evaluate.match(truth, found).tolist() == [False, False, True, True, False]


def test_iou_matrix() -> None:
    a = boxes((0, 0, 10, 10, 1, 0), (0, 0, 4, 4, 1, 0))[:, :4]
    b = boxes((5, 0, 15, 10, 1, 0), (20, 20, 30, 30, 1, 0))[:, :4]
    np.testing.assert_allclose(evaluate.iou_matrix(a, b), [[50 / 150, 0], [0, 0]])
    assert evaluate.iou_matrix(a, b[:0]).shape == (2, 0)


def test_average_precision_edges() -> None:
    assert np.isnan(evaluate.average_precision(np.array([0.5]), np.array([True]), 0))
    assert evaluate.average_precision(np.array([0.9, 0.8]), np.array([False, False]), 2) == 0.0
    assert evaluate.average_precision(np.array([0.9, 0.8]), np.array([True, True]), 4) == 0.5

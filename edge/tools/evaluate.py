"""The accuracy gate: a candidate variant's detections against a reference variant's (or COCO labels).

Agreement with the reference at IoU >= 0.5, same class, both at the task's confidence threshold:
precision, recall, F1. mAP@0.5 ranks the candidate's detections down to a low threshold against
the reference's detections as ground truth (all-point interpolated AP per class, mean over the
classes the reference found).
"""
from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.config.schema import DetectorParams, TaskConfig
from edge.engines.onnxruntime import OnnxRuntimeEngine
from edge.engines.repository import load_onnx
from edge.errors import EngineError
from edge.tasks.detector import YoloDetector
from edge.tools.common import input_shape
from edge.tools.data import DataError, Sample

IOU = 0.5
RANK_THRESHOLD = 0.01


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N,4] against every box in b [M,4] (x1, y1, x2, y2)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def match(truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    """For each found detection (best score first), True when it matches an unused truth box of its class."""
    order = np.argsort(-found[:, 4], kind="stable")
    used = np.zeros(len(truth), bool)
    hits = np.zeros(len(found), bool)
    ious = iou_matrix(found[:, :4], truth[:, :4])
    for i in order:
        candidates = np.nonzero((truth[:, 5] == found[i, 5]) & ~used & (ious[i] >= IOU))[0]
        if candidates.size:
            best = candidates[np.argmax(ious[i, candidates])]
            used[best] = hits[i] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, positives: int) -> float:
    """All-point interpolated AP (VOC 2010+ / COCO style at one IoU)."""
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = np.concatenate([[0.0], tp / positives, [1.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1e-9), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


@dataclasses.dataclass
class ClassStats:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def f1(self) -> float:
        return 2 * self.tp / max(1, 2 * self.tp + self.fp + self.fn)


def _detect_all(model: Path, samples: list[Sample], threshold: float, desc: str,
                progress: bool) -> tuple[list[np.ndarray], list[str]]:
    """Detections per sample (in the sample's pixels) and the model's labels."""
    params = DetectorParams(conf_threshold=threshold, max_detections=1000)
    config = TaskConfig(name="evaluate", type="detector", model=str(model), cameras=["data"], params=params)
    with OnnxRuntimeEngine(model) as engine:
        task = YoloDetector.from_engine(config, engine)
        slot = engine.create_slot("evaluate", depth=1)
        results = []
        # disable=None: a bar on a terminal only; logs are not filled with redraws
        for sample in tqdm(samples, desc=desc, unit="frame", disable=None if progress else True, leave=False):
            buf = slot.input()
            meta = task.preprocess(sample.image, buf)
            results.append(task.postprocess(slot.submit(buf).wait(), meta))
        labels = task.labels
    return results, labels


def evaluate(reference: Path, candidate: Path, samples: list[Sample], *, conf_threshold: float = 0.3,
             progress: bool = True) -> dict[str, Any]:
    """Agreement report of `candidate` against `reference` on `samples`."""
    shapes = {path: input_shape(load_onnx(path)) for path in (reference, candidate)}
    if shapes[reference] != shapes[candidate]:
        raise EngineError(f"reference and candidate take different inputs: {list(shapes[reference])} and"
                          f" {list(shapes[candidate])}", note=f"reference {reference}, candidate {candidate}",
                          hint="compare variants of the same model (same input size)")
    truth_all, labels = reference_detections(reference, samples, conf_threshold=conf_threshold, progress=progress)
    return evaluate_against(truth_all, labels, candidate, samples, conf_threshold=conf_threshold, progress=progress)


def reference_detections(reference: Path, samples: list[Sample], *, conf_threshold: float = 0.3,
                         progress: bool = True) -> tuple[list[np.ndarray], list[str]]:
    """The reference's detections, reusable across candidates."""
    return _detect_all(reference, samples, conf_threshold, "reference", progress)


def evaluate_against(truth_all: list[np.ndarray], labels: list[str], candidate: Path, samples: list[Sample], *,
                     conf_threshold: float = 0.3, progress: bool = True) -> dict[str, Any]:
    """Agreement of `candidate` with precomputed reference detections."""
    return score(truth_all, candidate_detections(candidate, samples, progress=progress), samples, labels,
                 conf_threshold=conf_threshold)


def candidate_detections(candidate: Path, samples: list[Sample], *, progress: bool = True) -> list[np.ndarray]:
    """The candidate's detections down to RANK_THRESHOLD (what `score` ranks for mAP)."""
    return _detect_all(candidate, samples, RANK_THRESHOLD, "candidate", progress)[0]


def score(truth_all: list[np.ndarray], ranked_all: list[np.ndarray], samples: list[Sample], labels: list[str], *,
          conf_threshold: float = 0.3) -> dict[str, Any]:
    """The agreement report of ranked candidate detections with the reference's, frame by frame."""
    per_class: dict[int, ClassStats] = collections.defaultdict(ClassStats)
    ranked_hits: dict[int, list[tuple[float, bool]]] = collections.defaultdict(list)
    frames = []
    for sample, truth, ranked in zip(samples, truth_all, ranked_all):
        found = ranked[ranked[:, 4] >= conf_threshold]
        hits = match(truth, found)
        matched_truth = int(hits.sum())
        for cls in np.unique(np.concatenate([truth[:, 5], found[:, 5]])).astype(int):
            stats = per_class[cls]
            stats.tp += int(hits[found[:, 5] == cls].sum())
            stats.fp += int((~hits[found[:, 5] == cls]).sum())
            stats.fn += int((truth[:, 5] == cls).sum()) - int(hits[found[:, 5] == cls].sum())
        for (score, cls), hit in zip(ranked[:, 4:6], match(truth, ranked)):
            ranked_hits[int(cls)].append((float(score), bool(hit)))
        frames.append({"frame": sample.id, "missed": len(truth) - matched_truth, "extra": int((~hits).sum()),
                       "reference": len(truth)})
    return _report(per_class, ranked_hits, truth_all, frames, labels, len(samples))


def _report(per_class: dict[int, ClassStats], ranked_hits: dict[int, list[tuple[float, bool]]],
            truth_all: list[np.ndarray], frames: list[dict[str, Any]], labels: list[str], count: int) -> dict[str, Any]:
    tp = sum(s.tp for s in per_class.values())
    fp = sum(s.fp for s in per_class.values())
    fn = sum(s.fn for s in per_class.values())
    positives = collections.Counter(int(c) for t in truth_all for c in t[:, 5])
    aps = {}
    for cls, n in positives.items():
        pairs = ranked_hits.get(cls, [])
        scores = np.array([p[0] for p in pairs], np.float32)
        hits = np.array([p[1] for p in pairs], bool)
        aps[cls] = average_precision(scores, hits, n)
    classes = sorted(({"class": labels[c], "f1": round(s.f1, 4), "tp": s.tp, "fp": s.fp, "fn": s.fn,
                       "ap50": round(aps[c], 4) if c in aps else None} for c, s in per_class.items()),
                     key=lambda r: (r["f1"], -(r["tp"] + r["fn"])))
    worst_frames = sorted(frames, key=lambda f: -(f["missed"] + f["extra"]))[:10]
    return {"frames": count, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(tp / max(1, tp + fp), 4), "recall": round(tp / max(1, tp + fn), 4),
            "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4),
            "map50": round(float(np.mean(list(aps.values()))), 4) if aps else None,
            "worst_classes": classes[:10], "worst_frames": worst_frames}


def format_report(report: dict[str, Any], *, reference: Path, candidate: Path, min_f1: float | None) -> str:
    lines = [f"candidate {candidate.name} against reference {reference.name} on {report['frames']} frames:",
             f"  F1 {report['f1']:.4f}  precision {report['precision']:.4f}  recall {report['recall']:.4f}"
             f"  mAP@0.5 {report['map50']}  (matched {report['tp']}, missed {report['fn']}, extra {report['fp']})",
             "  worst classes (F1, matched/missed/extra, AP50):"]
    lines += [f"    {c['class']:<14} {c['f1']:.3f}  {c['tp']}/{c['fn']}/{c['fp']}  {c['ap50']}"
              for c in report["worst_classes"][:5]]
    lines.append("  worst frames (missed/extra of reference count):")
    lines += [f"    {f['frame']}  {f['missed']}/{f['extra']} of {f['reference']}" for f in report["worst_frames"][:5]]
    if min_f1 is not None:
        verdict = "PASS" if report["f1"] >= min_f1 else "FAIL"
        lines.append(f"  gate: F1 {report['f1']:.4f} {'>=' if verdict == 'PASS' else '<'} {min_f1} -> {verdict}")
    return "\n".join(lines)


def coco_map(labels_json: Path, model: Path, samples: list[Sample], *, progress: bool = True) -> dict[str, Any]:
    """COCO mAP@0.5:0.95 and @0.5 of `model` against COCO-format labels (images matched by file name)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(labels_json))
    by_name = {Path(img["file_name"]).name: img["id"] for img in truth.dataset["images"]}
    labelled = [s for s in samples if Path(s.id).name in by_name]
    if not labelled:
        raise DataError(f"none of the {len(samples)} frames is an image listed in {labels_json}",
                        hint="COCO labels match images by file name; pass the labelled image folder with --data")
    detections, names = _detect_all(model, labelled, RANK_THRESHOLD, model.name, progress)
    category = {c["name"]: c["id"] for c in truth.dataset["categories"]}
    results = []
    for sample, dets in zip(labelled, detections):
        for x1, y1, x2, y2, score, cls in dets / np.array([sample.scale] * 4 + [1, 1], np.float32):
            if names[int(cls)] in category:
                results.append({"image_id": by_name[Path(sample.id).name], "category_id": category[names[int(cls)]],
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(score)})
    if not results:
        return {"images": len(labelled), "map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.params.imgIds = sorted(by_name[Path(s.id).name] for s in labelled)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"images": len(labelled), "map": round(float(evaluator.stats[0]), 4),
            "map50": round(float(evaluator.stats[1]), 4)}

"""Calibration-set selection: `random` (seeded) or `diverse` (k-center greedy over cheap embeddings).

The embedding of a frame is its 16x12 colour thumbnail, mean-removed and L2-normalised:
cheap, and it separates scenes, lighting and crowd layouts well enough to avoid spending
the calibration budget on near-duplicate consecutive video frames.
"""
from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from edge.tools.data import Sample

Strategy = Literal["random", "diverse"]
THUMBNAIL = (16, 12)


def embed(samples: list[Sample]) -> np.ndarray:
    rows = []
    for sample in samples:
        thumb = cv2.resize(sample.image, THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        thumb -= thumb.mean()
        rows.append(thumb / max(float(np.linalg.norm(thumb)), 1e-6))
    return np.stack(rows) if rows else np.zeros((0, THUMBNAIL[0] * THUMBNAIL[1] * 3), np.float32)


def k_center_greedy(points: np.ndarray, count: int) -> list[int]:
    """Indexes of `count` points, each the farthest from those already chosen; starts at the medoid-ish
    point nearest the mean, so the result is deterministic."""
    first = int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    chosen = [first]
    distance = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < count:
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


def select(samples: list[Sample], count: int, strategy: Strategy, *, seed: int = 0) -> list[Sample]:
    """`count` samples by `strategy`, in their original order. ValueError when count is out of range."""
    if not 1 <= count <= len(samples):
        raise ValueError(f"cannot select {count} of {len(samples)} frames")
    if strategy == "random":
        picked = np.random.default_rng(seed).choice(len(samples), size=count, replace=False).tolist()
    elif strategy == "diverse":
        picked = k_center_greedy(embed(samples), count)
    else:
        raise ValueError(f"unknown selection strategy {strategy!r} (random, diverse)")
    return [samples[i] for i in sorted(picked)]

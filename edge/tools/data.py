"""Frames for calibration and evaluation: video files, image files and image folders.

Frames are stored resized to fit the model input (aspect kept): exact for the letterbox
preprocessing, and 795 vtest frames take about 300 MB instead of 1 GB.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edge import opencv
from edge.errors import EdgeError

cv2 = opencv.import_cv2()

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v"}


class DataError(EdgeError):
    """Calibration or evaluation data is missing, unreadable or too small."""


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str                  # "path" for images, "path#frame" for video frames
    image: np.ndarray        # BGR uint8, resized to fit the model input
    scale: float = 1.0       # stored size / original size (boxes / scale = original pixels)


@dataclasses.dataclass
class LoadReport:
    loaded: int = 0
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def describe(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"{self.loaded} frames loaded; skipped: {skipped}"


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize so the image fits inside (width, height) keeping its aspect ratio, as the letterbox does."""
    h, w = image.shape[:2]
    scale = min(size[0] / w, size[1] / h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image if new == (w, h) else cv2.resize(image, new, interpolation=cv2.INTER_LINEAR)


def load_samples(sources: Iterable[str | Path], *, fit_to: tuple[int, int], every: int = 1,
                 frames: range | None = None) -> tuple[list[Sample], LoadReport]:
    """Frames from videos (every `every`-th, optionally only indexes in `frames`), images and folders.

    Unreadable and non-image files are skipped and counted in the report; a source that does
    not exist is an error.
    """
    report = LoadReport()
    samples = []
    for source in sources:
        for sample in _iter_source(Path(source), every, frames, report):
            resized = fit(sample.image, fit_to)
            samples.append(Sample(sample.id, resized, resized.shape[1] / sample.image.shape[1]))
            report.loaded += 1
    return samples, report


def require(samples: list[Sample], report: LoadReport, needed: int, what: str) -> None:
    """Refuse when fewer usable frames remain than `needed`."""
    if len(samples) < needed:
        raise DataError(f"{what}: {len(samples)} usable frames, at least {needed} needed",
                        note=report.describe(),
                        hint="add videos or image folders, or lower --count")


def _iter_source(path: Path, every: int, frames: range | None, report: LoadReport) -> Iterator[Sample]:
    if not path.exists():
        raise DataError(f"data source does not exist: {path}", hint="pass video files, image files or folders")
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            yield from _iter_file(child, every, frames, report)
    else:
        yield from _iter_file(path, every, frames, report)


def _iter_file(path: Path, every: int, frames: range | None, report: LoadReport) -> Iterator[Sample]:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        yield from _iter_video(path, every, frames, report)
    elif suffix in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            report.skipped["unreadable images"] += 1
        else:
            yield Sample(str(path), image)
    else:
        report.skipped["non-image files"] += 1


def _iter_video(path: Path, every: int, frames: range | None, report: LoadReport) -> Iterator[Sample]:
    opencv.route_media_logs(cv2)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        report.skipped["unreadable videos"] += 1
        return
    index = 0
    try:
        while frames is None or index < frames.stop:
            ok, image = capture.read()
            if not ok:
                break
            if index % every == 0 and (frames is None or index in frames):
                yield Sample(f"{path}#{index}", image)
            index += 1
    finally:
        capture.release()
    if index == 0:
        report.skipped["unreadable videos"] += 1

"""Small real videos for tests, made at test time: H.264 and H.265 clips (or any codec FFmpeg encodes) of the demo's
vtest.avi with PyAV (libx264, libx265; the dev extra pins it), and MJPG files of numbered grey frames with OpenCV.
vtest.avi is not committed, so neither is anything made of it.

`encode(recipe, path)` is the one encoder: a `Clip` recipe into a file of the caller's, in any container. `clip(name)`
caches a named clip of CLIPS beside the demo assets in `<asset cache>/clips/`, with a JSON sidecar holding the frame
count PyAV decodes from it, so a test on a machine without PyAV (the device machine, which has no encoder either:
the clips are made here and carried, docs/testing.md) still has the reference count; beside an 8-bit clip, PyAV's
decode of its first frame (NV12, `.npz`). A cached clip's file name carries a hash of its recipe: a changed recipe
makes a new file, never reuses a stale one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from edge.files import atomic_path, default_cache_dir

VTEST = "media/vtest.avi"           # relative to the asset cache (edge/tools/assets.py)
FPS = 10                            # vtest.avi's own rate
FORMAT = 2                          # of what is made for a clip (in its name's hash): 2 added the first frame


@dataclasses.dataclass(frozen=True)
class Clip:
    encoder: str                    # PyAV's name of the FFmpeg encoder
    frames: int                     # the first N frames of vtest.avi
    size: tuple[int, int] | None = None     # scaled to this (w, h); None: vtest's own 768x576
    bt709: bool = False             # tag the stream BT.709 limited range; else untagged (SD: readers assume BT.601)
    pix_fmt: str = "yuv420p"        # yuv420p10le: 10-bit (HEVC Main 10), which NVDEC decodes to P016
    options: tuple[tuple[str, str], ...] = ()   # encoder options

    @property
    def stem(self) -> str:
        recipe = json.dumps([FORMAT, dataclasses.asdict(self)], sort_keys=True).encode()
        codec = {"libx264": "h264", "libx265": "h265"}[self.encoder]
        w, h = self.size or (768, 576)
        return f"{codec}-{w}x{h}-{self.frames}f-{hashlib.sha256(recipe).hexdigest()[:8]}"


# Small clips for the CPU tier (a few hundred kB), the 1080p clip of the benchmark and the gpu tier (~2 MB: 300
# frames, looped by the camera), and a 10-bit one that edge refuses from NVDEC (P016, not NV12). x264 and x265
# use B-frames by default, so decoders reorder.
CLIPS = {
    "h264": Clip("libx264", 40, options=(("preset", "veryfast"),)),
    "h265": Clip("libx265", 40, options=(("preset", "veryfast"), ("x265-params", "log-level=error"))),
    "h264-1080p": Clip("libx264", 300, size=(1920, 1080), bt709=True, options=(("preset", "veryfast"), ("crf", "28"))),
    "h265-10bit": Clip("libx265", 10, pix_fmt="yuv420p10le",
                       options=(("preset", "veryfast"), ("x265-params", "log-level=error"))),
}


def small(encoder: str, frames: int = 20, size: tuple[int, int] = (320, 240)) -> Clip:
    """The recipe of a small clip for a test of its own (x265 told to log errors only)."""
    quiet = (("x265-params", "log-level=error"),) if encoder == "libx265" else ()
    return Clip(encoder, frames, size=size, options=quiet)


def clip(name: str, root: Path | None = None) -> Path:
    """The clip `name` of CLIPS under `root` (the asset cache; default $EDGE_CACHE or ~/.cache/edge), encoded
    from its vtest.avi first if it is not there yet (that needs PyAV)."""
    recipe = CLIPS[name]
    root = root or default_cache_dir()
    path = root / "clips" / f"{recipe.stem}.mp4"
    if not path.is_file() or not path.with_suffix(".json").is_file():
        _cache(recipe, root, path)
    return path


def decoded_frames(path: Path) -> int:
    """How many frames PyAV decoded from the clip at `path` when it was made (its sidecar)."""
    return int(json.loads(path.with_suffix(".json").read_text())["frames"])


def first_frame(path: Path) -> np.ndarray:
    """PyAV's decode of the clip's first frame as NV12 rows (luma, then interleaved chroma), kept when it was made:
    an H.264/H.265 decoder is exact, so NVDEC must give these bytes."""
    with np.load(path.with_suffix(".npz")) as saved:
        return saved["nv12"]


def encode(recipe: Clip, path: Path, *, fmt: str | None = None, root: Path | None = None) -> Path:
    """`recipe` encoded from the vtest.avi under `root` (the asset cache; default $EDGE_CACHE or ~/.cache/edge) into
    `path`, its container from its suffix or `fmt` (FFmpeg's name: "mp4", "matroska", or "h264"/"hevc" for an
    elementary stream). FileNotFoundError where PyAV or vtest.avi is missing, saying how to get them."""
    av = _pyav(path)
    from av.video.reformatter import Colorspace

    source = (root or default_cache_dir()) / VTEST
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: the clips are made from the demo video; run `edge assets fetch`"
                                " (or scripts/test.sh, which fetches it) first")
    with av.open(str(source)) as video, av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(recipe.encoder, rate=FPS)
        width, height = recipe.size or (video.streams.video[0].width, video.streams.video[0].height)
        stream.width, stream.height, stream.pix_fmt = width, height, recipe.pix_fmt
        stream.options = dict(recipe.options)
        if recipe.bt709:                # AVCOL_SPC_BT709, AVCOL_RANGE_MPEG, AVCOL_PRI_BT709, AVCOL_TRC_BT709
            context = stream.codec_context
            context.colorspace = context.color_range = context.color_primaries = context.color_trc = 1
        for index, frame in enumerate(video.decode(video=0)):
            if index == recipe.frames:
                break
            scaled = frame.reformat(width=width, height=height, format=recipe.pix_fmt,
                                    dst_colorspace=Colorspace.ITU709 if recipe.bt709 else None)
            scaled.pts = None
            out.mux(stream.encode(scaled))
        out.mux(stream.encode(None))
    return path


def write_video(path: Path, frames: int, size: tuple[int, int] = (160, 120), fps: float = 25.0) -> Path:
    """An MJPG AVI of `frames` grey frames, each with its number drawn on it (OpenCV's writer: no PyAV needed)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        image = np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)
        cv2.putText(image, str(i), (10, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
        writer.write(image)
    writer.release()
    return path


def _cache(recipe: Clip, root: Path, path: Path) -> None:
    """Encode `recipe` to `path` with its sidecars: PyAV's frame count and its decode of the first frame."""
    av = _pyav(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        encode(recipe, tmp, fmt="mp4", root=root)
        with av.open(str(tmp)) as check:
            decoded = check.decode(video=0)
            first = next(decoded)
            frames = 1 + sum(1 for _ in decoded)
    if first.format.name == "yuv420p":
        with atomic_path(path.with_suffix(".npz")) as tmp, open(tmp, "wb") as file:
            np.savez_compressed(file, nv12=first.to_ndarray(format="nv12"))
    width, height = first.width, first.height
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"frames": frames, "size": [width, height], "encoder": recipe.encoder}))


def _pyav(path: Path) -> ModuleType:
    """PyAV, only where a clip is made (the device machine reads carried ones); FileNotFoundError naming `path`."""
    try:
        import av
    except ImportError as exc:
        raise FileNotFoundError(f"{path} is missing and PyAV (the dev extra) is not here to make it: make the clips"
                                " where it is (`python -m tests.support.clips DIR` copies them into DIR/clips) and"
                                " carry them") from exc
    return av


if __name__ == "__main__":          # python -m tests.support.clips [DIR]: make every clip, copy them into DIR/clips
    import shutil
    import sys

    for clip_name in CLIPS:
        made = clip(clip_name)
        if len(sys.argv) > 1:
            (Path(sys.argv[1]) / "clips").mkdir(parents=True, exist_ok=True)
            for part in (made, made.with_suffix(".json"), made.with_suffix(".npz")):
                if part.exists():
                    shutil.copyfile(part, Path(sys.argv[1]) / "clips" / part.name)
        print(made)

"""CPU preprocessing straight into an engine slot's input buffer (letterbox, BGR->RGB, 0..1, NCHW).

The GPU variant (edge/gpu/letterbox.py) shares the geometry (Letterbox) and the frame check, and
reproduces this path's numbers bit for bit (cv2.resize INTER_LINEAR, then x * float32(1/255))."""
from __future__ import annotations

import dataclasses

import numpy as np

from edge.errors import EdgeError
from edge.opencv import import_cv2

cv2 = import_cv2()        # here, at import: without OpenCV, edge stops at start and says what to install
INV255 = np.float32(1.0 / 255.0)


class FrameError(EdgeError, ValueError):
    """A frame that preprocessing cannot take (not a non-empty BGR uint8 HxWx3 array)."""


def check_frame(image: np.ndarray) -> None:
    """FrameError unless `image` is a non-empty BGR uint8 HxWx3 array."""
    if not isinstance(image, np.ndarray):
        raise FrameError("expected a BGR uint8 HxWx3 image", note=f"got {type(image).__name__}",
                         hint="a frame that failed to decode is None: check the reader's return value")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise FrameError("expected a BGR uint8 HxWx3 image", note=f"got {image.dtype} {image.shape}",
                         hint="pass the frame as a camera or cv2.imread gives it (BGR, 8 bits, 3 channels);"
                              " convert grey or BGRA with cv2.cvtColor first")


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How a source frame was placed into the network input: x_net = x_src * scale + left."""

    scale: float
    left: int
    top: int
    width: int      # resized image inside the input
    height: int
    src_width: int
    src_height: int

    @classmethod
    def fit(cls, src_w: int, src_h: int, dst_w: int, dst_h: int) -> Letterbox:
        scale = min(dst_w / src_w, dst_h / src_h)
        w, h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
        return cls(scale, (dst_w - w) // 2, (dst_h - h) // 2, w, h, src_w, src_h)

    def resize_steps(self) -> tuple[float, float]:
        """Source pixels per resized pixel along x and y, computed as cv2.resize does: 1 / (dst / src)."""
        return 1.0 / (self.width / self.src_width), 1.0 / (self.height / self.src_height)

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map [N,4] x1,y1,x2,y2 boxes from network-input pixels back to source pixels, clipped."""
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] - self.left) / self.scale
        out[:, 1::2] = (boxes[:, 1::2] - self.top) / self.scale
        np.clip(out[:, 0::2], 0, self.src_width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.src_height, out=out[:, 1::2])
        return out


def letterbox_into(image: np.ndarray, out: np.ndarray, *, fill: float = 0.5) -> Letterbox:
    """Resize a BGR uint8 HxWx3 image keeping its aspect ratio into `out` [1,3,H,W] float32 RGB 0..1."""
    check_frame(image)
    _, _, dst_h, dst_w = out.shape
    box = Letterbox.fit(image.shape[1], image.shape[0], dst_w, dst_h)
    resized = cv2.resize(image, (box.width, box.height), interpolation=cv2.INTER_LINEAR)
    view = out[0, :, box.top:box.top + box.height, box.left:box.left + box.width]
    np.multiply(resized[:, :, ::-1].transpose(2, 0, 1), INV255, out=view, casting="unsafe")
    out[0, :, :box.top, :] = fill
    out[0, :, box.top + box.height:, :] = fill
    out[0, :, box.top:box.top + box.height, :box.left] = fill
    out[0, :, box.top:box.top + box.height, box.left + box.width:] = fill
    return box

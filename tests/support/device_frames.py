"""A hardware decoder's side of device frames, on the CUDA stand-in (tests/support/fake_cuda.py): a SurfacePool,
a stream the "decode" runs on, a ready event per surface; `frame()` hands out the next frame as a decoder does."""
from __future__ import annotations

from typing import Any

import numpy as np

from edge.gpu.surfaces import DeviceFrame, SurfacePool
from tests.support import fake_cuda

NV12 = {"pixel_format": "nv12", "width": 10, "height": 6, "pitch": 16, "plane_offsets": (0, 128),
        "matrix": "bt709", "full_range": False}


class Decoder:
    """Acquire a surface, write it on the decoder's stream, record the frame's ready event there, hand out the
    frame (one reference: its producer's). `fill` writes each surface's bytes (a pattern per frame)."""

    def __init__(self, count: int = 3, *, fields: dict[str, Any] | None = None, nbytes: int = 1024) -> None:
        self.pool = SurfacePool(nbytes, count)
        self.fields = fields or NV12
        with self.pool._context.current():
            self.stream = fake_cuda.Stream()
            self.ready = [fake_cuda.Event() for _ in range(count)]
        self.made = 0

    def frame(self, timeout: float = 0.0) -> DeviceFrame:
        surface = self.pool.acquire(timeout)
        assert surface is not None, "no free surface"
        fake_cuda.ledger.memory[surface.pointer][:] = np.uint8(self.made % 256)
        ready = self.ready[self.made % len(self.ready)]
        self.made += 1
        with self.pool._context.current():
            ready.record(self.stream)
        return surface.frame(**self.fields, ready=ready)

    def back(self, count: int = 1) -> bool:
        """Whether `count` surfaces are free now (they stay free)."""
        surfaces = [self.pool.acquire(0) for _ in range(count)]
        for surface in surfaces:
            if surface is not None:
                surface.frame(**self.fields, ready=None).release(None)
        return None not in surfaces

    def free(self) -> None:
        with self.pool._context.current():
            for owned in (*self.ready, self.stream):
                owned.free()
        self.pool.free()

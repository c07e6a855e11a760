"""The random-weight engine stand-in: the demo model's shape class with random weights, for GPU benchmarks where
TensorRT is missing (run behind the TensorRT stand-in by benchmarks/graph_engine.py).

The network: a YOLOv3-tiny-shaped conv stack (the 13 convolutions of yolov3-tiny.cfg with folded batch norm,
LeakyReLU 0.1, the six max pools including the stride-1 one with end padding, the nearest upsample and the
route concat; input 1x3x416x416, heads 1x255x13x13 and 1x255x26x26), random weights from a fixed seed, run in
fp16 (channels-last) by PyTorch. Its IO stays fp32, as the demo's fp16 variant keeps its IO types.
benchmarks/onnx_engine.py runs the demo model itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.graph_engine import GraphNetwork

NAME = ("YOLOv3-tiny-shaped fp16 conv stack (random weights), PyTorch, one CUDA graph per frame record"
        " replayed on the caller's stream")


class TinyYoloShaped(nn.Module):
    """The layers of yolov3-tiny.cfg, without its YOLO decode (edge decodes on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        widths = [3, 16, 32, 64, 128, 256]
        self.backbone = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(widths, widths[1:]))
        self.conv512 = nn.Conv2d(256, 512, 3, padding=1)
        self.conv1024 = nn.Conv2d(512, 1024, 3, padding=1)
        self.neck = nn.Conv2d(1024, 256, 1)
        self.pre13 = nn.Conv2d(256, 512, 3, padding=1)
        self.head13 = nn.Conv2d(512, 255, 1)
        self.lateral = nn.Conv2d(256, 128, 1)
        self.pre26 = nn.Conv2d(384, 256, 3, padding=1)
        self.head26 = nn.Conv2d(256, 255, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for index, conv in enumerate(self.backbone):        # 416 -> 26 (four 2x2 pools), 256 channels
            x = _leaky(conv(x))
            if index < len(self.backbone) - 1:
                x = F.max_pool2d(x, 2, 2)
        route26 = x
        x = _leaky(self.conv512(F.max_pool2d(x, 2, 2)))
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)     # the stride-1 pool, end padding
        neck = _leaky(self.neck(_leaky(self.conv1024(x))))
        out13 = self.head13(_leaky(self.pre13(neck)))
        up = F.interpolate(_leaky(self.lateral(neck)), scale_factor=2, mode="nearest")
        out26 = self.head26(_leaky(self.pre26(torch.cat([up, route26], 1))))
        return out13, out26


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


def network(*, seed: int = 0) -> GraphNetwork:
    """The random-weight stack on device 0, fp16 channels-last, its fp32 input cast on the way in."""
    torch.manual_seed(seed)
    model = TinyYoloShaped().to(device="cuda", dtype=torch.float16, memory_format=torch.channels_last)
    model = model.eval().requires_grad_(False)

    def forward(source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model(source.to(dtype=torch.float16, memory_format=torch.channels_last))

    return GraphNetwork(forward, NAME)

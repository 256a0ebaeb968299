"""RobustBench's ``DMWideResNet`` (WRN-70-16 with swish), the CIFAR-10 classifier FreqPure loads.

UNVERIFIED: there is no numeric fixture for this architecture; names and shapes follow the
description of RobustBench's ``dm_wide_resnet`` module. Blocks pad explicitly ("SAME" padding:
1 pixel each side for stride 1, right/bottom only for stride 2) before an unpadded 3×3 conv.
Input normalisation by the CIFAR-10 mean/std happens inside (non-persistent buffers).

Forward: ``net(x [B, 3, 32, 32] in [0, 1]) -> logits [B, num_classes]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freqpure.errors import UsageError

__all__ = ["DMWideResNet", "build_dm_wrn"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
_ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU}


class _Block(nn.Module):
    """Pre-activation block; the 1×1 shortcut (when widths differ) sees the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise UsageError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=0.01)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=0.01)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(pre) if self.has_shortcut else x
        padded = F.pad(pre, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(padded))))
        return shortcut + out


class _BlockGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*[
            _Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, act)
            for i in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """WRN-``depth``-``width`` with input normalisation, for 32×32 images in [0, 1]."""

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 70,
        width: int = 16,
        activation: str = "swish",
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        padding: int = 0,
        num_input_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise UsageError(f"depth must be 6n+4, got {depth}")
        act = _ACTIVATIONS[activation]
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.register_buffer("mean", torch.tensor(mean).view(1, num_input_channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, num_input_channels, 1, 1), persistent=False)
        self.padding = padding
        self.init_conv = nn.Conv2d(num_input_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            _BlockGroup(n, widths[0], widths[1], 1, act),
            _BlockGroup(n, widths[1], widths[2], 2, act),
            _BlockGroup(n, widths[2], widths[3], 2, act),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3], momentum=0.01)
        self.relu = act()
        self.logits = nn.Linear(widths[3], num_classes)
        self.num_channels = widths[3]

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, 3, 32, 32] in [0, 1] → logits [B, num_classes]."""
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        out = self.init_conv((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
        out = self.relu(self.batchnorm(self.layer(out)))
        out = F.avg_pool2d(out, 8)
        return self.logits(out.reshape(-1, self.num_channels))


def build_dm_wrn(config: dict) -> DMWideResNet:
    """Build from :class:`DMWideResNet` keyword arguments."""
    return DMWideResNet(**config)

"""WideResNet in RobustBench's layout (CIFAR-10 ``Standard`` WRN-28-10, from the TRADES code base).

Pre-activation basic blocks; when a block changes width, the 1×1 ``convShortcut`` is applied to
``relu(bn1(x))``, otherwise the shortcut is ``x`` itself. No input normalisation inside.

Forward: ``net(x [B, 3, 32, 32] in [0, 1]) -> logits [B, num_classes]`` (the head average-pools
over 8×8, so inputs must be 32×32).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from freqpure.errors import UsageError

__all__ = ["WideResNet", "build_wrn"]


class BasicBlock(nn.Module):
    """Pre-activation residual block: bn-relu-conv3×3-bn-relu-conv3×3."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """``n`` basic blocks; the first changes width and applies the stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32×32 inputs in [0, 1]. Args as RobustBench's constructor."""

    def __init__(
        self,
        depth: int = 28,
        num_classes: int = 10,
        widen_factor: int = 10,
        sub_block1: bool = False,
        dropRate: float = 0.0,  # noqa: N803 (RobustBench's keyword)
        bias_last: bool = True,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise UsageError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropRate)
        if sub_block1:  # present in some checkpoints, unused in the forward pass
            self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1, dropRate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropRate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropRate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)
        self.n_channels = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, 3, 32, 32] in [0, 1] → logits [B, num_classes]."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.fc(out.reshape(-1, self.n_channels))


def build_wrn(config: dict) -> WideResNet:
    """Build from RobustBench's ``WideResNet`` keyword arguments."""
    return WideResNet(**config)

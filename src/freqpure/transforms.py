"""Small differentiable image transforms used around the purifier (resize, normalisation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Resize", "Normalize", "IMAGENET_MEAN", "IMAGENET_STD", "imagenet_classifier_input"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Resize(nn.Module):
    """Bilinear resize of ``[B, C, H, W]`` to ``size × size`` (``align_corners=False``, as FreqPure/DiffPure)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel; ``x`` in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def imagenet_classifier_input(size: int = 224) -> nn.Module:
    """Purified 256×256 image in [0, 1] → ImageNet-normalised ``size × size`` classifier input."""
    return nn.Sequential(Resize(size), Normalize(IMAGENET_MEAN, IMAGENET_STD))

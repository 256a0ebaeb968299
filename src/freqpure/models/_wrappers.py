"""Input-space wrappers for classifiers: map [0, 1] images to what a raw network expects."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NormalizedClassifier"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NormalizedClassifier(nn.Module):
    """``x`` [B, C, H, W] in [0, 1] → (optional bilinear resize) → ``(x - mean) / std`` → ``net``.

    ``mean``/``std`` are non-persistent buffers, so ``state_dict`` keys are ``net.<raw keys>``.
    ``input_size``: resize to this square size when the input differs (bilinear,
    ``align_corners=False``, as FreqPure does before its ImageNet classifier); ``None`` keeps the size.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, C, H, W] in [0, 1] → logits [B, num_classes]."""
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

"""Random draws of a training step: batch augmentation and diffusion step indices (seeded generator)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["augment_batch", "sample_steps"]


def augment_batch(x: Tensor, gen: torch.Generator, hflip: bool = True, translate: int = 0) -> Tensor:
    """Random horizontal flip and translation (reflect padding) of a batch ``[B, C, H, W]``.

    Vectorised: one mask for the flips, and one slice per distinct shift (``(2·translate+1)²`` at most).
    """
    b = x.shape[0]
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if translate > 0:
        r = translate
        h, w = x.shape[-2:]
        padded = F.pad(x, (r, r, r, r), mode="reflect")
        shift = torch.randint(0, 2 * r + 1, (b, 2), generator=gen)
        out = torch.empty_like(x)
        code = shift[:, 0] * (2 * r + 1) + shift[:, 1]
        for c in torch.unique(code).tolist():
            idx = torch.nonzero(code == c).squeeze(1)
            dy, dx = divmod(c, 2 * r + 1)
            out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
        x = out
    return x


def sample_steps(b: int, gen: torch.Generator, num_steps: int, low_frac: float, low_max: int) -> Tensor:
    """Step indices ``[b]`` (int64).

    Each index is drawn uniformly from ``0..low_max-1`` with probability ``low_frac``, else uniformly
    from ``0..num_steps-1``.
    """
    full = torch.randint(0, num_steps, (b,), generator=gen)
    if low_frac <= 0:
        return full
    low = torch.randint(0, low_max, (b,), generator=gen)
    pick = torch.rand(b, generator=gen) < low_frac
    return torch.where(pick, low, full)

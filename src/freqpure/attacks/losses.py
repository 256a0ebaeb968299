"""Per-sample attack losses on logits ``[B, K]`` and integer labels ``[B]`` → ``[B]`` (larger = more adversarial)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from freqpure.attacks.types import Loss, parse_enum

__all__ = ["attack_loss", "margin"]


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """CW margin ``max_{j≠y} z_j − z_y`` per sample: positive iff misclassified."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), torch.finfo(logits.dtype).min)
    return others.max(1).values - true


def attack_loss(logits: Tensor, y: Tensor, loss: Loss | str = Loss.CE) -> Tensor:
    """Cross-entropy or margin per sample, ``[B]``, float32."""
    loss = parse_enum(Loss, loss, "loss")
    logits = logits.float()
    if loss is Loss.CE:
        return F.cross_entropy(logits, y, reduction="none")
    return margin(logits, y)

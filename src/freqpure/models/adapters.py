"""Adapters that map every diffusion network family onto one ε-model interface.

The samplers in :mod:`freqpure.samplers` drive any callable ``eps_model(x_t, t) -> out`` where

* ``x_t`` is ``[B, C, H, W]`` in diffusion space (data scaled to [-1, 1], plus noise),
* ``t`` is a float tensor ``[B]`` of *discrete step indices* in ``0..999`` (may be fractional),
* ``out`` is ``[B, C, H, W]`` (ε) or ``[B, 2C, H, W]`` (ε followed by guided-diffusion's learned
  variance interpolation values in [-1, 1]).

:class:`EpsModel` wraps a raw network and records what the purifiers need to validate inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from freqpure.epsmodel import NUM_STEPS, check_step_range, model_t_max
from freqpure.errors import UsageError

__all__ = ["EpsModel", "NUM_STEPS", "check_step_range", "model_t_max"]  # the last three: freqpure.epsmodel


class EpsModel(nn.Module):
    """A network exposed as an ε-model on discrete step indices.

    Args:
        net: the network; called as ``net(x, t_label)``.
        image_size: spatial size the network was trained on (``None``: any size).
        channels: image channels (3 for RGB).
        learn_sigma: the network returns ``2·channels`` outputs (ε, variance values).
        time_scale: multiply the step index by this before calling ``net``. 1.0 for DDPM/ADM
            networks (integer steps) and for NCSN++ trained in continuous VP time (label ``t·999``,
            which equals the step index under ``t = n / 999``).
        name: a human-readable name for manifests.
        t_max: the model was trained on step indices ``0..t_max-1`` only (1000: the whole schedule;
            a purification-range model such as ``cifar10-ddpm-pure`` has 200). Purifiers refuse to
            noise beyond it (:func:`freqpure.epsmodel.check_step_range`).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        image_size: int | None,
        channels: int = 3,
        learn_sigma: bool = False,
        time_scale: float = 1.0,
        name: str = "eps-model",
        t_max: int = NUM_STEPS,
    ) -> None:
        super().__init__()
        if not 1 <= int(t_max) <= NUM_STEPS:
            raise UsageError(f"diffusion model {name!r}: t_max must be in 1..{NUM_STEPS}, got {t_max}")
        self.net = net
        self.image_size = image_size
        self.channels = channels
        self.learn_sigma = learn_sigma
        self.time_scale = time_scale
        self.name = name
        self.t_max = int(t_max)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x`` [B, C, H, W] in diffusion space, ``t`` [B] step indices → [B, C or 2C, H, W]."""
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.net(x, t * self.time_scale)

    def extra_repr(self) -> str:
        size = f"{self.image_size}x{self.image_size}" if self.image_size else "any size"
        return f"name={self.name!r}, {size}, steps 0..{self.t_max - 1} (t_max={self.t_max})"

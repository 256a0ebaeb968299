"""Expectation over Transformation: gradients averaged over K independent draws of the defence's noise.

The K draws of a batch ``[B, C, H, W]`` are stacked draw-major into one ``[K·B, C, H, W]`` batch and
sent through the model in one call, or in chunks of whole draws when ``max_batch`` says so. Draw ``k``
always gets noise stream ``k`` (:class:`DrawNoise`), so chunked and batched evaluation give the same
numbers, and the EOT gradient is exactly the mean of the per-draw gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from freqpure.attacks.losses import attack_loss
from freqpure.attacks.types import Loss, parse_enum
from freqpure.errors import UsageError
from freqpure.samplers import StepNoise

__all__ = ["DrawNoise", "EOTGradient"]


class DrawNoise:
    """Noise for a draw-major batch ``[K·B, ...]``: draw ``k`` takes its slice from its own stream.

    Behaves like :class:`~freqpure.samplers.StepNoise` (``noise(key, like)``, ``child(salt)``), so any
    purifier accepts it.
    """

    def __init__(self, streams: Sequence[StepNoise]) -> None:
        if not streams:
            raise UsageError("DrawNoise needs at least one stream")
        self.streams = list(streams)

    @classmethod
    def from_seed(cls, seed: int, draws: int) -> DrawNoise:
        """``draws`` independent streams derived from ``seed``."""
        base = StepNoise(seed)
        return cls([base.child(k) for k in range(draws)])

    def __len__(self) -> int:
        return len(self.streams)

    def __call__(self, key: int, like: Tensor) -> Tensor:
        k = len(self.streams)
        if like.shape[0] % k:
            raise UsageError(f"batch of {like.shape[0]} is not a multiple of the {k} draws")
        part = like[: like.shape[0] // k]
        return torch.cat([s(key, part) for s in self.streams]) if k > 1 else self.streams[0](key, part)

    def child(self, salt: int) -> DrawNoise:
        return DrawNoise([s.child(salt) for s in self.streams])

    def select(self, start: int, stop: int) -> DrawNoise:
        """The streams of draws ``start..stop-1``."""
        return DrawNoise(self.streams[start:stop])

    def __repr__(self) -> str:
        return f"DrawNoise({len(self.streams)} draws, first={self.streams[0]!r})"


class EOTGradient:
    """Gradient oracle ``loss_and_grad(x, y) -> (loss [B], grad [B, C, H, W])``.

    ``loss`` is the per-sample attack loss averaged over ``eot`` draws of the model's randomness and
    ``grad`` its gradient with respect to ``x`` (exact: the mean of the per-draw gradients).

    Args:
        model: ``model(x [N,C,H,W] in [0,1], noise) -> logits [N, K]``, e.g.
            :class:`~freqpure.attacks.gradients.AttackModel`. A model whose ``stochastic`` attribute
            is false (or missing) is called as ``model(x)`` with ``eot`` forced to 1.
        eot: number of independent draws per call.
        loss: ``"ce"`` or ``"margin"`` (:class:`~freqpure.attacks.types.Loss`).
        seed: call ``i`` uses the draws of :meth:`noise_at` ``(i)``; the whole attack is replayable.
        max_batch: at most this many images per model call (whole draws per chunk; ``None``: one call).
            On an out-of-memory error the draws per call are halved and the call is redone; chunking
            never changes the numbers.
    """

    def __init__(self, model: nn.Module, *, eot: int = 1, loss: Loss | str = Loss.CE, seed: int = 0,
                 max_batch: int | None = None) -> None:
        if eot < 1:
            raise UsageError(f"eot must be >= 1, got {eot}")
        if max_batch is not None and max_batch < 1:
            raise UsageError(f"max_batch must be >= 1 or None, got {max_batch}")
        self.model = model
        self.stochastic = bool(getattr(model, "stochastic", False))
        self.eot = eot if self.stochastic else 1
        self.loss_name = parse_enum(Loss, loss, "loss")
        self.seed = int(seed)
        self.max_batch = max_batch
        self.calls = 0

    def noise_at(self, call: int) -> DrawNoise | None:
        """The draws used by call number ``call`` (``None`` for a deterministic model)."""
        if not self.stochastic:
            return None
        return DrawNoise.from_seed(StepNoise(self.seed).child(call).seed, self.eot)

    def _chunks(self, batch: int) -> list[tuple[int, int]]:
        per = self.eot if self.max_batch is None else max(1, self.max_batch // batch)
        return [(d, min(d + per, self.eot)) for d in range(0, self.eot, per)]

    def _shrink(self, batch: int, err: RuntimeError) -> None:
        """After an out-of-memory error: halve the draws per call, or re-raise when already at one draw."""
        per = self.eot if self.max_batch is None else max(1, self.max_batch // batch)
        if per <= 1 or not _is_oom(err):
            raise err
        self.max_batch = (per // 2) * batch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _draw_losses(self, x: Tensor, y: Tensor, noise: DrawNoise | None, start: int, stop: int) -> Tensor:
        k = stop - start
        xr = x.repeat(k, 1, 1, 1) if k > 1 else x
        logits = self.model(xr, noise.select(start, stop)) if noise is not None else self.model(xr)
        return attack_loss(logits, y.repeat(k), self.loss_name).view(k, x.shape[0])

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, C, H, W]`` in [0, 1], ``y`` ``[B]`` → (EOT loss ``[B]``, its gradient ``[B, C, H, W]``)."""
        noise = self.noise_at(self.calls)
        self.calls += 1
        x = x.detach().requires_grad_(True)
        while True:  # all draws in one call where memory allows, else fewer draws per call (same numbers)
            try:
                total = torch.zeros(x.shape[0], device=x.device)
                grad = torch.zeros_like(x)
                with torch.enable_grad():
                    for start, stop in self._chunks(x.shape[0]):
                        losses = self._draw_losses(x, y, noise, start, stop)
                        (g,) = torch.autograd.grad(losses.sum() / self.eot, x)
                        grad += g
                        total += losses.detach().sum(0) / self.eot
                return total, grad
            except RuntimeError as err:
                self._shrink(x.shape[0], err)

    @torch.no_grad()
    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The EOT-averaged loss alone (no gradient; one call's draws)."""
        noise = self.noise_at(self.calls)
        self.calls += 1
        while True:
            try:
                total = torch.zeros(x.shape[0], device=x.device)
                for start, stop in self._chunks(x.shape[0]):
                    total += self._draw_losses(x, y, noise, start, stop).sum(0) / self.eot
                return total
            except RuntimeError as err:
                self._shrink(x.shape[0], err)


def _is_oom(err: RuntimeError) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's "can't allocate memory"."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text

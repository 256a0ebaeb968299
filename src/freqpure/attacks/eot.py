"""Expectation over Transformation: gradients averaged over K independent draws of the defence's noise.

The K draws of a batch ``[B, C, H, W]`` are stacked draw-major into one ``[K·B, C, H, W]`` batch and
sent through the model in one call, or in chunks of whole draws when ``max_batch`` says so. Draw ``k``
always gets noise stream ``k`` (:class:`DrawNoise`), so chunked and batched evaluation give the same
numbers, and the EOT gradient is exactly the mean of the per-draw gradients.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from freqpure.attacks.losses import attack_loss
from freqpure.attacks.types import Loss, parse_enum
from freqpure.errors import UsageError
from freqpure.noise import DrawNoise, NoiseSource, StepNoise, eot_draws

__all__ = ["DrawNoise", "EOTGradient", "NoiseSource", "StochasticModel", "is_stochastic"]


@runtime_checkable
class StochasticModel(Protocol):
    """What EOT needs from a model: ``stochastic = True`` and ``model(x, noise) -> logits`` where every
    random draw comes from ``noise`` (a :class:`NoiseSource`), so that different noise gives
    independent draws and the same noise replays the same draws.

    :class:`~freqpure.attacks.gradients.AttackModel`, :class:`~freqpure.purifiers.PurifiedClassifier`
    and every :class:`~freqpure.purifiers.Purifier` follow it. A deterministic model says
    ``stochastic = False`` (or has no such attribute) and is called as ``model(x)``.
    """

    stochastic: bool

    def __call__(self, x: Tensor, noise: NoiseSource | None = None) -> Tensor: ...


def is_stochastic(model: object) -> bool:
    """True when ``model`` declares ``stochastic = True`` (see :class:`StochasticModel`)."""
    return getattr(model, "stochastic", False) is True


class EOTGradient:
    """Gradient oracle ``loss_and_grad(x, y) -> (loss [B], grad [B, C, H, W])``.

    ``loss`` is the per-sample attack loss averaged over ``eot`` draws of the model's randomness and
    ``grad`` its gradient with respect to ``x`` (exact: the mean of the per-draw gradients).

    Args:
        model: ``model(x [N,C,H,W] in [0,1], noise) -> logits [N, K]``: a :class:`StochasticModel`
            (``stochastic = True``), e.g. :class:`~freqpure.attacks.gradients.AttackModel` or
            :class:`~freqpure.purifiers.PurifiedClassifier`; or a deterministic model, called as
            ``model(x)``, which only makes sense with ``eot=1``: ``eot > 1`` on a model that does not
            declare ``stochastic = True`` is a :class:`~freqpure.errors.UsageError` (it cannot take
            fresh noise, so the draws would all be the same — or, for a wrapper that draws its own
            noise inside, not replayable).
        eot: number of independent draws per call.
        loss: ``"ce"`` or ``"margin"`` (:class:`~freqpure.attacks.types.Loss`).
        seed: an int or a noise root (a :class:`~freqpure.noise.NoiseSource`: a stream, or an ``image-v1``
            :class:`~freqpure.noise.DrawNoise` of one stream per image); call ``i`` uses the draws of
            :meth:`noise_at` ``(i)`` (:func:`~freqpure.noise.eot_draws`: ``root.child(i).child(k)`` for draw
            ``k``), so the whole attack is replayable.
        max_batch: at most this many images per model call (whole draws per chunk; ``None``: one call).
            On an out-of-memory error the draws per call are halved and the call is redone; chunking
            never changes the numbers.
    """

    def __init__(self, model: nn.Module, *, eot: int = 1, loss: Loss | str = Loss.CE, seed: int | NoiseSource = 0,
                 max_batch: int | None = None) -> None:
        if eot < 1:
            raise UsageError(f"eot must be >= 1, got {eot}")
        if max_batch is not None and max_batch < 1:
            raise UsageError(f"max_batch must be >= 1 or None, got {max_batch}")
        self.model = model
        self.stochastic = is_stochastic(model)
        if eot > 1 and not self.stochastic:
            raise UsageError(
                f"EOTGradient(eot={eot}) needs a model that takes fresh noise, but {type(model).__name__} does not "
                "declare stochastic = True. Give it forward(x, noise) that draws every random number from noise "
                "(a freqpure NoiseSource) and set stochastic = True (freqpure.attacks.StochasticModel; AttackModel "
                "and PurifiedClassifier do this), or use eot=1 for a deterministic model")
        self.eot = eot
        self.loss_name = parse_enum(Loss, loss, "loss")
        self.root = seed if isinstance(seed, NoiseSource) else StepNoise(int(seed))
        self.max_batch = max_batch
        self.calls = 0

    @property
    def seed(self) -> int | None:
        """The root's seed (``None`` for a root of several streams)."""
        return getattr(self.root, "seed", None)

    def noise_at(self, call: int) -> DrawNoise | None:
        """The draws used by call number ``call`` (``None`` for a deterministic model)."""
        if not self.stochastic:
            return None
        return eot_draws(self.root, call, self.eot)

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

"""The defended classifier: a classifier behind a purifier, voting over an ensemble of purifications.

:class:`PurifiedClassifier` purifies every input ``ensemble`` times (batched, noise addressed per image and per
draw), classifies every purification and combines the logits by :func:`combine_draws`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freqpure._checks import as_compute_dtype, check_int, compute_dtype
from freqpure.errors import UsageError
from freqpure.noise import DrawNoise, StepNoise, ensemble_streams
from freqpure.runtime import ensure_thread_policy, resolve_precision, run_in_precision

__all__ = ["PurifiedClassifier", "combine_draws", "Vote", "VOTES"]

Vote = Literal["majority", "logits", "softmax"]
VOTES = ("majority", "logits", "softmax")


class PurifiedClassifier(nn.Module):
    """A classifier defended by a purifier: ``scores = vote(classifier(post(purifier(pre(x)))))``.

    Args:
        classifier: ``nn.Module`` taking images in [0, 1] (after ``postprocess``) → logits ``[B, K]``.
        purifier: a :class:`Purifier` (or any module ``[B,C,H,W] → [B,C,H,W]`` accepting ``noise=``).
        ensemble: number of independent purification runs per input (batched into one call).
        vote: ``"majority"`` — the value is the vote share of each class (ties broken by the mean
            softmax), the gradient that of the mean softmax (straight-through). The value is piecewise
            constant, so a loss computed on it (what AutoAttack's APGD tracks) is flat: give attack
            libraries ``"softmax"`` instead, as the evaluation does for AutoAttack
            (:meth:`freqpure.evaluation.components.Defence.mean_softmax_model`); ``"softmax"`` — log of
            the mean softmax; ``"logits"`` — mean logits.
        preprocess: applied to the input before purification (e.g. ``Resize(256)``).
        postprocess: applied to the purified image before the classifier (e.g. ``Resize(224)`` and
            ImageNet normalisation, see :func:`freqpure.transforms.imagenet_classifier_input`).
        max_batch: purify at most this many images per call (chunks the ``ensemble × B`` batch). Never
            changes the result: the noise is addressed per image and per ensemble draw (row ``b`` of
            draw ``e`` uses stream ``noise.rows(B)[b].child(e)``), not per chunk.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` for the classifier call (autocast; the
            purifier has its own ``precision``).

    Stochastic (``stochastic = True``, see :class:`freqpure.attacks.StochasticModel`): ``forward(x,
    noise)`` takes any noise source with ``rows(n)`` (a :class:`~freqpure.samplers.StepNoise` or
    :class:`~freqpure.samplers.DrawNoise`), so :class:`~freqpure.attacks.EOTGradient` can average
    over fresh draws of it.
    """

    stochastic = True

    def __init__(
        self,
        classifier: nn.Module,
        purifier: nn.Module,
        ensemble: int = 1,
        vote: Vote = "majority",
        *,
        preprocess: Callable[[Tensor], Tensor] | None = None,
        postprocess: Callable[[Tensor], Tensor] | None = None,
        max_batch: int | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        ensemble = check_int(ensemble, "ensemble", 1)
        if max_batch is not None:
            max_batch = check_int(max_batch, "max_batch", 1)
        if not callable(classifier):
            raise UsageError(f"classifier must be a module or callable, got {type(classifier).__name__}")
        if not callable(purifier):
            raise UsageError(f"purifier must be a module or callable, got {type(purifier).__name__}")
        resolve_precision(precision)  # refuse a bad name here
        if vote not in VOTES:
            raise UsageError(f"vote must be 'majority', 'logits' or 'softmax', got {vote!r}")
        self.classifier = classifier
        self.purifier = purifier
        self.ensemble = ensemble
        self.vote = vote
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.max_batch = max_batch
        self.precision = precision

    def purify(self, x: Tensor, noise: StepNoise | DrawNoise | None = None) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] → ``[ensemble·B, C, H', W']`` purified (draw-major order)."""
        ensure_thread_policy()
        x = self._check_input(x)
        if self.preprocess is not None:
            x = self.preprocess(x)
        n = x.shape[0]
        batch = x.repeat(self.ensemble, 1, 1, 1)
        if noise is None and hasattr(self.purifier, "new_noise"):
            noise = self.purifier.new_noise()
        streams = None
        if noise is not None:
            if not hasattr(noise, "rows"):
                raise UsageError(f"PurifiedClassifier needs a noise source with rows(n) (StepNoise or DrawNoise), "
                                 f"got {type(noise).__name__}")
            streams = ensemble_streams(noise, n, self.ensemble)  # row e·B + b: noise.rows(B)[b].child(e)
        chunk = self.max_batch or batch.shape[0]
        outs = []
        for start in range(0, batch.shape[0], chunk):
            part = None if streams is None else DrawNoise(streams[start : start + chunk])
            outs.append(self.purifier(batch[start : start + chunk], noise=part))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def _check_input(x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            hint = " (convert it with torch.from_numpy, scaled to [0, 1])" if hasattr(x, "__array__") else ""
            raise UsageError(f"x must be a torch.Tensor [B, C, H, W], got {type(x).__name__}{hint}")
        if x.ndim != 4:
            hint = "; add a batch dimension with x[None]" if x.ndim == 3 else ""
            raise UsageError(f"x must be 4-D [B, C, H, W], got shape {tuple(x.shape)}{hint}")
        if x.shape[0] == 0:
            raise UsageError(f"x is an empty batch (shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise UsageError(f"x must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
        return x

    def __repr__(self) -> str:  # one line of settings, not the whole network
        clf = getattr(self.classifier, "name", None) or type(self.classifier).__name__
        extra = f", max_batch={self.max_batch}" if self.max_batch else ""
        return (f"PurifiedClassifier(classifier={clf}, purifier={self.purifier!r}, ensemble={self.ensemble}, "
                f"vote={self.vote}{extra})")

    def logits_per_draw(self, x: Tensor, noise: StepNoise | None = None) -> Tensor:
        """Classifier logits of every purification run: ``[ensemble, B, K]``."""
        purified = self.purify(x, noise)
        if self.postprocess is not None:
            purified = self.postprocess(purified)
        logits = run_in_precision(self.classifier, self.precision,
                                  as_compute_dtype(purified, compute_dtype(self.classifier)))
        return logits.view(self.ensemble, x.shape[0], -1)

    def forward(self, x: Tensor, noise: StepNoise | None = None) -> Tensor:
        """``x`` ``[B, C, H, W]`` in [0, 1] → scores ``[B, K]`` (argmax = the defended prediction)."""
        return combine_draws(self.logits_per_draw(x, noise), self.vote)


def combine_draws(logits: Tensor, vote: Vote = "majority") -> Tensor:
    """Combine the logits of several purification runs ``[E, B, K]`` into scores ``[B, K]``.

    See :class:`PurifiedClassifier` for the three ``vote`` rules and their gradients.
    """
    if vote == "logits":
        return logits.mean(0)
    probs = F.softmax(logits.float(), dim=-1).mean(0)
    if vote == "softmax":
        return probs.clamp_min(1e-12).log()
    votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(probs.dtype).mean(0)
    value = votes + 1e-3 * probs  # the vote share; the mean softmax only breaks ties
    return value.detach() + (probs - probs.detach())

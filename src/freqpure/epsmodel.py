"""What a purifier may read from an ε-model callable, and the step-range check built on it.

A purifier drives any callable ``eps_model(x_t, t)`` (see :mod:`freqpure.samplers`). The callable may also
carry these optional attributes (:class:`DescribedEpsModel`); a purifier uses each only when present:

* ``t_max`` (int): the model was trained on step indices ``0..t_max-1`` only (absent, ``None`` or 0: the whole
  :data:`NUM_STEPS`-step schedule). :func:`check_step_range` refuses plans that noise beyond it;
* ``name`` (str): how errors name the model (absent: its type's name);
* ``channels`` (int) and ``image_size`` (int): what the inputs are checked against.

This module knows nothing of the model registry: :class:`freqpure.models.adapters.EpsModel` is one callable
that carries these attributes; any other callable may carry them too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from torch import Tensor

from freqpure.errors import UsageError

__all__ = ["NUM_STEPS", "DescribedEpsModel", "model_t_max", "check_step_range"]

NUM_STEPS = 1000  # the discrete schedule every supported model uses (step indices 0..999)


@runtime_checkable
class DescribedEpsModel(Protocol):
    """An ε-model callable that says which step indices it was trained on (and, optionally, its name)."""

    t_max: int

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor: ...


def model_t_max(eps_model: object) -> int:
    """The step range a model was trained on (``eps_model.t_max``; 1000 for callables that do not say)."""
    return int(getattr(eps_model, "t_max", NUM_STEPS) or NUM_STEPS)


def check_step_range(eps_model: object, t_stars: Iterable[int], reference_t: int | None = None) -> None:
    """Refuse a plan that noises beyond the model's trained range (``UsageError`` naming model, range, t*).

    ``t_stars``: the noise level of each round (the chain starts at step index ``t_star - 1``, so
    ``t_star <= t_max`` is needed); ``reference_t``: a step index the model is also called at (FreqPure's
    ``denoised`` reference), which needs ``reference_t < t_max``.
    """
    t_max = model_t_max(eps_model)
    if t_max >= NUM_STEPS:
        return
    name = getattr(eps_model, "name", type(eps_model).__name__)
    where = f"diffusion model {name!r} was trained on step indices 0..{t_max - 1} only (t_max = {t_max})"
    for i, t_star in enumerate(t_stars):
        if t_star > t_max:
            raise UsageError(f"purification round {i + 1} noises to t* = {t_star}, but {where}; "
                             f"use t* <= {t_max} or a full-range model (e.g. cifar10-ddpm-small)")
    if reference_t is not None and reference_t >= t_max:
        raise UsageError(f"the denoised reference re-noises to reference_t = {reference_t}, but {where}; "
                         f"use reference_t <= {t_max - 1}")

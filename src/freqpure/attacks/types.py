"""Typed names for threat models, gradient modes and losses; strings are accepted at the API edge."""

from __future__ import annotations

from enum import Enum
from fractions import Fraction
from typing import TypeVar

from freqpure.errors import UsageError

__all__ = ["Norm", "GradientMode", "Loss", "parse_enum", "parse_number", "eps_text"]

E = TypeVar("E", bound=Enum)


class Norm(str, Enum):
    """Threat model: the norm of the perturbation ball."""

    LINF = "linf"
    L2 = "l2"

    @property
    def autoattack_name(self) -> str:
        """The spelling AutoAttack expects (``"Linf"`` / ``"L2"``)."""
        return {"linf": "Linf", "l2": "L2"}[self.value]


class GradientMode(str, Enum):
    """How an attack differentiates through the purifier.

    * ``full``: exact backprop through every sampler step and frequency exchange (plain backprop when
      the graph fits in memory, else per-step gradient checkpointing keeps memory flat in the number of
      steps; the same gradient either way);
    * ``surrogate``: backprop through a purifier with the same total noise t* but fewer denoising
      steps (Lee & Kim, ICCV 2023), while the defence keeps its own settings;
    * ``adjoint``: VP-SDE sampler, gradients from ``torchsde.sdeint_adjoint`` (as DiffPure);
    * ``bpda``: the purifier's output in the forward pass, identity in the backward pass.
    """

    FULL = "full"
    SURROGATE = "surrogate"
    ADJOINT = "adjoint"
    BPDA = "bpda"


class Loss(str, Enum):
    """Per-sample attack loss on logits: cross-entropy or the CW margin ``max_{j≠y} z_j − z_y``."""

    CE = "ce"
    MARGIN = "margin"


_ALIASES = {"l_inf": "linf", "linf": "linf", "inf": "linf", "l∞": "linf", "l-inf": "linf", "l_2": "l2"}


def parse_enum(cls: type[E], value: str | E, what: str) -> E:
    """``value`` (an enum member or its case-insensitive name) → member of ``cls``; clear error otherwise."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        key = _ALIASES.get(key, key) if cls is Norm else key
        for member in cls:
            if member.value == key:
                return member
    valid = ", ".join(m.value for m in cls)
    raise UsageError(f"unknown {what} {value!r}; valid: {valid}")


def parse_number(value: float | int | str, where: str) -> float:
    """``0.031``, ``8/255`` or ``"8/255"`` → float; clear error otherwise."""
    if isinstance(value, bool):
        raise UsageError(f"{where} must be a number or a fraction like 8/255, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{where} must be a number or a fraction like 8/255, got {value!r}") from None


def eps_text(eps: float) -> str:
    """``0.0313…`` → ``"8/255"`` (a fraction when one with a small denominator is exact), else ``"0.5"``."""
    frac = Fraction(eps).limit_denominator(1000)
    if frac.denominator > 1 and abs(float(frac) - eps) < 1e-12:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{eps:g}"

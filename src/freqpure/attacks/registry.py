"""One interface for every attack the evaluation runs, and the registry that finds them by name.

An attack is an object following :class:`Attack` (the torchattacks idea, as a protocol): it owns

* ``settings_type``: its typed settings, a dataclass derived from
  :class:`~freqpure.attacks.settings.AttackSettings` (the shared norm, eps, eot, loss, gradient, label)
  with the attack's own fields; a key it does not have is refused when a config is read;
* ``validate(cfg)``: its own checks of its settings, returning a normalised copy (never changing ``cfg``),
  raising :class:`~freqpure.errors.UsageError`;
* ``label(cfg)``: the display label (the key of the attack's column and records);
* ``protocol_text(cfg)``: one sentence for results files saying exactly what was run;
* ``settings(cfg)``: the settings that change its strength (for ``AttackConfig.settings_key()``);
* ``build_model(defence, cfg)``: what it attacks, built once per run from the defence;
* ``run(model, cfg, ctx)``: the attack on one batch → :class:`AttackResult`.

``cfg`` is the attack's settings (an instance of its ``settings_type``), so this package does not depend
on :mod:`freqpure.evaluation`. An attack module registers its attack at import with
:func:`register_attack`; the registry imports every module of :mod:`freqpure.attacks` on first use, so
adding an attack touches one file (plus its test).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from freqpure.errors import UnknownNameError
from freqpure.noise import NoiseSource

__all__ = [
    "Attack",
    "AttackContext",
    "AttackResult",
    "Judge",
    "attack_names",
    "get_attack",
    "register_attack",
    "settings_key",
]

Judge = Callable[[Tensor, Tensor, int], Tensor]  # (x_adv [k,C,H,W], y [k], stage) -> correct [k] bool


@dataclass
class AttackContext:
    """What the runner gives an attack for one batch.

    ``x`` ``[B, C, H, W]`` in [0, 1] and ``y`` ``[B]``; ``noise``: the root of the attack's own noise
    (EOT draws, the attacked model's noise), ``start``: the root of its random starts (draw them through
    :func:`freqpure.noise.start_generator`); both depend on ``(seed, batch, attack index)`` only, or under
    ``noise_addressing: image-v1`` on ``(seed, image, attack index)`` per row (a
    :class:`~freqpure.noise.DrawNoise` of one stream per image). ``judge``: the defence's verdict with fresh
    noise per stage (``None`` for a deterministic defence). ``check_gradients``: measure the first gradient's norm.
    """

    x: Tensor
    y: Tensor
    noise: NoiseSource
    start: NoiseSource
    judge: Judge | None = None
    check_gradients: bool = True


@dataclass
class AttackResult:
    """``x_adv`` ``[B, C, H, W]`` in [0, 1]; ``loss`` ``[B]`` the attack's own loss at ``x_adv`` (NaN when it
    does not measure one); ``grad_norm`` ``[B]`` the first gradient's L2 norm (NaN when not measured)."""

    x_adv: Tensor
    loss: Tensor
    grad_norm: Tensor


@runtime_checkable
class Attack(Protocol):
    """The interface every registered attack follows (see the module docstring)."""

    name: str
    settings_type: type  # a dataclass derived from freqpure.attacks.settings.AttackSettings

    def validate(self, cfg: Any) -> Any: ...

    def label(self, cfg: Any) -> str: ...

    def protocol_text(self, cfg: Any) -> str: ...

    def settings(self, cfg: Any) -> dict[str, Any]: ...

    def build_model(self, defence: Any, cfg: Any) -> Any: ...

    def run(self, model: Any, cfg: Any, ctx: AttackContext) -> AttackResult: ...


_REGISTRY: dict[str, Attack] = {}
_DISCOVERED = False


def register_attack(attack: Attack) -> Attack:
    """Add ``attack`` under ``attack.name`` (a second attack with the same name is a bug: ValueError)."""
    members = ("name", "settings_type", "validate", "label", "protocol_text", "settings", "build_model", "run")
    missing = [m for m in members if not hasattr(attack, m)]
    if missing:
        raise TypeError(f"{type(attack).__name__} is not an Attack: missing {', '.join(missing)}")
    if attack.name in _REGISTRY and _REGISTRY[attack.name] is not attack:
        raise ValueError(f"attack name {attack.name!r} is registered twice")
    _REGISTRY[attack.name] = attack
    return attack


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import freqpure.attacks as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"freqpure.attacks.{info.name}")
    _DISCOVERED = True


def attack_names() -> list[str]:
    """Registered attack names, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_attack(name: str) -> Attack:
    """The attack registered as ``name``; :class:`~freqpure.errors.UnknownNameError` listing the valid ones."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(f"unknown attack {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(round(value, 12))
    return str(value)


def settings_key(cfg: Any) -> str:
    """A stable string of everything that sets an attack's strength: ``name`` and the attack's
    :meth:`Attack.settings` (norm, eps, steps, step size, EOT, gradient, surrogate plan and whether it
    matches, band, restarts, random start, keep, loss, ...), as ``key=value`` joined by ``;`` in a fixed
    order. Two configs with the same key run the same attack; labels and batching do not enter it."""
    items = get_attack(cfg.name).settings(cfg)  # a setting that is None (unused) is left out
    return ";".join([f"name={cfg.name}"] + [f"{k}={_fmt(v)}" for k, v in items.items() if v is not None])

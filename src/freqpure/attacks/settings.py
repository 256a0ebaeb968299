"""Typed settings of an attack: the fields every attack shares, and the tagged union that picks an attack's own.

Each registered attack owns a dataclass derived from :class:`AttackSettings` (its ``settings_type``:
``PGDSettings`` in :mod:`~freqpure.attacks.pgd`, ``BandPGDSettings`` in :mod:`~freqpure.attacks.band`,
``AutoAttackSettings`` in :mod:`~freqpure.attacks.autoattack`, ...). :func:`attack_settings` reads a
mapping such as a YAML entry ``{name: pgd, eps: 8/255, steps: 20}``: the ``name`` chooses the attack, its
settings type takes the rest, a key the attack does not have is an error naming the attack and the key,
and the attack's :meth:`~freqpure.attacks.registry.Attack.validate` returns the normalised settings.

The saved form (:meth:`AttackSettings.saved_dict`) keeps the flat layout every attack config was written in
before the settings were typed (:data:`SAVED_LAYOUT`: every key of every built-in attack, the ones an attack
does not have at their defaults), so config.yaml files, results.json configs and the run folders'
fingerprints are the same as before. Reading accepts such a foreign key only at that default.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

from freqpure.attacks.registry import attack_names, get_attack, settings_key
from freqpure.attacks.types import GradientMode, Loss, Norm, parse_enum, parse_number
from freqpure.errors import UsageError

__all__ = ["AttackSettings", "EPS_LIMITS", "SAVED_LAYOUT", "attack_settings", "setting_names"]

# Radii above these are not adversarial robustness any more (pixel units of [0, 1] images).
EPS_LIMITS = {Norm.LINF: 0.5, Norm.L2: 50.0}

# The saved layout of an attack config, in order, with each key's default: the flat union the configs were
# written in before each attack had its own settings type. Never reorder or drop a key (fingerprints).
SAVED_LAYOUT: dict[str, Any] = {
    "name": "pgd", "norm": "linf", "eps": 8 / 255, "steps": 20, "step_size": None, "eot": 1, "random_start": True,
    "restarts": 1, "loss": "ce", "keep": "best", "gradient": "full", "surrogate_rounds": None,
    "surrogate_match": True, "band_max_radius": None, "version": "rand", "eot_batch": None, "label": None,
    "autoattack_iters": None,
}


@dataclass
class AttackSettings:
    """What every attack has: ``name`` (a registered attack), ``norm`` and ``eps`` (fractions such as ``8/255``
    accepted), ``eot`` draws per gradient or forward, ``loss``, the ``gradient`` mode through the purifier
    (``full``, ``surrogate`` with ``surrogate_rounds`` and ``surrogate_match``, ``adjoint`` or ``bpda``) and an
    optional display ``label``. Build one with :func:`attack_settings` (or ``AttackConfig(...)``), which runs
    the attack's own checks too."""

    name: str = "pgd"
    norm: str = "linf"
    eps: float | str = 8 / 255
    eot: int = 1
    loss: str = "ce"
    gradient: str = "full"
    surrogate_rounds: str | None = None
    surrogate_match: bool = True
    label: str | None = None

    def __post_init__(self) -> None:
        spec = get_attack(self.name)  # UnknownNameError listing the registered attacks
        if type(self) is not spec.settings_type:
            raise UsageError(f"attack {self.name!r} takes {spec.settings_type.__name__}, not {type(self).__name__}")
        norm = parse_enum(Norm, self.norm, "norm (attacks.norm)")
        self.norm = norm.value
        self.eps = parse_number(self.eps, "attack eps")
        limit = EPS_LIMITS[norm]
        if not (0 < self.eps <= limit and math.isfinite(self.eps)):
            raise UsageError(f"attack eps={self.eps:g} is out of range for {norm.value}: need 0 < eps <= {limit:g} "
                             "(pixel units of [0, 1] images; e.g. 8/255 for L-inf, 0.5 for L2)")
        if self.eot < 1:
            raise UsageError(f"attack eot must be >= 1, got {self.eot}")
        self.loss = parse_enum(Loss, self.loss, "loss (attacks.loss)").value
        self.gradient = parse_enum(GradientMode, self.gradient, "gradient mode (attacks.gradient)").value
        if self.gradient == GradientMode.SURROGATE.value and not self.surrogate_rounds:
            raise UsageError("gradient 'surrogate' needs surrogate_rounds (e.g. '100:1': same t*, 1 step)")

    @property
    def norm_enum(self) -> Norm:
        return Norm(self.norm)

    @property
    def spec(self) -> Any:
        """The registered attack (:class:`freqpure.attacks.registry.Attack`) that runs these settings."""
        return get_attack(self.name)

    def display(self) -> str:
        """A readable label, e.g. ``pgd-linf-8/255-full-eot20`` (``label`` when given)."""
        return self.label or self.spec.label(self)

    def protocol_text(self) -> str:
        """One sentence for results files: exactly what this attack runs."""
        return self.spec.protocol_text(self)

    def settings_key(self) -> str:
        """A stable string of every setting that changes the attack's strength, without the label; equal keys
        = the same attack (``table`` refuses to merge different ones)."""
        return settings_key(self)

    def saved_dict(self) -> dict[str, Any]:
        """The saved form: :data:`SAVED_LAYOUT`'s keys in order (this attack's values, the defaults for keys it
        does not have), then any setting of its own outside the layout."""
        own = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {key: own.get(key, default) for key, default in SAVED_LAYOUT.items()}
        out.update({k: v for k, v in own.items() if k not in out})
        return out

    @classmethod
    def from_config(cls, data: dict[str, Any] | None, where: str = "") -> AttackSettings:
        """``from_dict``'s hook for this tagged union: :func:`attack_settings`."""
        return attack_settings(data, where)


def setting_names(settings_type: type) -> list[str]:
    """The keys a settings type takes, in field order."""
    return [f.name for f in fields(settings_type)]


def _foreign_key_error(name: str, key: str, own: list[str], where: str) -> UsageError:
    owners = [other for other in attack_names()
              if other != name and key in setting_names(get_attack(other).settings_type)]
    prefix = f"{where}: " if where else ""
    if owners:
        use = f"; use name: {owners[0]}" if len(owners) == 1 else ""
        return UsageError(f"{prefix}attack {name!r} takes no {key!r}: {key} applies to {', '.join(owners)} only{use}")
    close = difflib.get_close_matches(key, own, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"{prefix}attack {name!r} has no setting {key!r}{hint}; its settings: {', '.join(own)}")


def attack_settings(data: dict[str, Any] | None, where: str = "") -> AttackSettings:
    """A mapping (a YAML entry of ``attacks``) → the typed, validated settings of the attack it names.

    ``name`` (default ``pgd``) picks the attack; every other key must be one of its settings, except that a key
    of the saved layout (:data:`SAVED_LAYOUT`) it does not have is accepted at its default (config files saved
    before the settings were typed list every attack's keys). Values are coerced as the config loader does."""
    from freqpure.config.io import coerce_fields

    data = dict(data or {})
    name = data.get("name", SAVED_LAYOUT["name"])
    if not isinstance(name, str):
        raise UsageError(f"{where or 'attack'}.name must be a string, got {name!r}")
    settings_type = get_attack(name).settings_type
    own = setting_names(settings_type)
    for key in [k for k in data if k not in own]:
        if key in SAVED_LAYOUT and data[key] == SAVED_LAYOUT[key]:
            del data[key]  # a foreign key of the saved layout, at its default: nothing set
        else:
            raise _foreign_key_error(name, str(key), own, where)
    settings = settings_type(**coerce_fields(settings_type, data, where or "attack"))
    return settings.spec.validate(settings)

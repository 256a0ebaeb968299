"""Purifier defaults and named presets: the one place every entry point takes its purification settings from.

The library defaults (:data:`DEFAULTS`) are what ``FreqPure(eps_model)``, ``DiffPure(eps_model)``,
:class:`freqpure.config.PurifierConfig()` and ``freqpure purify`` use when nothing is given. They are also
recorded in every results file written so far (configs leave out what they do not change), so they stay
as they are; the settings a run really uses are named by a preset:

=================  ============================================================================================
``default``        the library defaults: t* = 100, 20 DDPM steps, r_a = r_p = 10, δ = 0.3, paper variant
``bundled-table``  t* = 100, 5 DDPM steps, r_a = r_p = 3, δ = 0.3: the robustness table (docs/results.md),
                   ``freqpure demo`` and the ``configs/cifar10-*-bundled.yaml`` PGD/BPDA configs (sized for a CPU)
``paper``          FreqPure as the paper states it on CIFAR-10: ten rounds ``20:5*5,50:5*5``, r = 3, δ = 0.3
                   (``configs/cifar10-freqpure-*-published.yaml``)
``official-v2``    the official code's arithmetic (``variant: official``) at the same plan, r = 3, δ = 0.3
                   (the official ``cifar10 _v2.sh``, behind the paper's numbers)
``official-sh``    the official code at its ``cifar10.sh`` setting: ``1000:100``, r = 10, δ = 0.3
``diffpure-paper`` DiffPure's CIFAR-10 setting: VP-SDE, t* = 0.1, 100 Euler steps (``100:100``, ``sde``)
``paper-imagenet`` FreqPure's ImageNet plan ``50:5*8``, r = 10, δ = 0.3 (256×256 ADM)
=================  ============================================================================================

A preset sets only the keys it names; everything else keeps its default, and explicit settings given after
it win (``purify --preset bundled-table --method diffpure``).

The valid values of each setting (:data:`METHODS`, :data:`SAMPLERS`, :data:`VARIANTS`, :data:`VARIANT_CHOICES`) and
the one check of each (:func:`check_choice`, :func:`check_distance`, :func:`check_flag`, :func:`check_step_index`,
:func:`check_rounds`, :func:`check_variant_keys`) live here too: :class:`freqpure.config.PurifierConfig` and the
constructors of :mod:`freqpure.purifiers` call the same functions.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from freqpure._checks import check_int
from freqpure.errors import UsageError
from freqpure.schedules import PurificationRound, parse_rounds, round_timesteps

__all__ = ["DEFAULTS", "PRESETS", "Preset", "preset_names", "SAMPLERS", "METHODS", "VARIANTS", "VARIANT_CHOICES",
           "VALUE_ALIASES", "resolve_variant", "current_value", "check_choice", "check_distance", "check_flag",
           "check_step_index", "check_rounds", "check_variant_keys"]  # preset(): freqpure.config.preset

# The library defaults. PurifierConfig's fields, FreqPure's and DiffPure's signatures read these.
DEFAULTS: dict[str, Any] = {
    "method": "freqpure",
    "diffusion": "cifar10-ddpm-small",
    "rounds": "100:20",
    "t_star": 100,
    "steps": 20,
    "sampler": "ddpm",
    "amp_radius": 10.0,
    "phase_radius": 10.0,
    "delta": 0.3,
    "variant": "paper",
    "reference_t": 50,
}


@dataclass(frozen=True)
class Preset:
    """A named set of purifier settings (keys of :class:`freqpure.config.PurifierConfig`) and what it is."""

    name: str
    description: str
    settings: dict[str, Any]


_V2 = "20:5*5,50:5*5"
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("default", "the library defaults (t*=100, 20 DDPM steps, r=10, delta=0.3, paper variant)", {}),
    Preset("bundled-table", "the robustness table (docs/results.md), the demo and the bundled PGD/BPDA configs "
           "(t*=100, 5 DDPM steps, r=3, delta=0.3)",
           {"rounds": "100:5", "amp_radius": 3.0, "phase_radius": 3.0, "delta": 0.3}),
    Preset("paper", "FreqPure as the paper states it on CIFAR-10 (ten rounds 20:5*5,50:5*5, r=3, delta=0.3)",
           {"method": "freqpure", "variant": "paper", "rounds": _V2, "amp_radius": 3.0, "phase_radius": 3.0,
            "delta": 0.3}),
    Preset("official-v2", "the official FreqPure code, its CIFAR-10 v2 script (variant official, 20:5*5,50:5*5, "
           "r=3, delta=0.3)",
           {"method": "freqpure", "variant": "official", "rounds": _V2, "amp_radius": 3.0, "phase_radius": 3.0,
            "delta": 0.3}),
    Preset("official-sh", "the official FreqPure code, its cifar10.sh script (variant official, 1000:100, r=10, "
           "delta=0.3)",
           {"method": "freqpure", "variant": "official", "rounds": "1000:100", "amp_radius": 10.0,
            "phase_radius": 10.0, "delta": 0.3}),
    Preset("diffpure-paper", "DiffPure's CIFAR-10 setting (VP-SDE, t*=0.1, 100 Euler steps)",
           {"method": "diffpure", "rounds": "100:100", "sampler": "sde"}),
    Preset("paper-imagenet", "FreqPure's ImageNet plan (50:5*8, r=10, delta=0.3; needs a 256x256 model)",
           {"method": "freqpure", "variant": "paper", "rounds": "50:5*8", "amp_radius": 10.0, "phase_radius": 10.0,
            "delta": 0.3}),
)}


def preset_names() -> list[str]:
    """The preset names, in table order."""
    return list(PRESETS)


# ------------------------------------------------------------------------------------- valid choices
# The one list of each purifier setting's valid values: the purifiers, PurifierConfig and the commands read these.
METHODS = ("freqpure", "diffpure", "none")
SAMPLERS = ("ddpm", "ddim", "sde")

# The variants. "paper": the method as the paper states it (freqpure's default). "official": the arithmetic of the
# official FreqPure code (purification.py / ddp_test.py), like for like.
VARIANTS: dict[str, dict[str, str]] = {
    "paper": {"mode": "paper", "reference": "input", "step_rule": "posterior", "grid": "respaced",
              "variance": "learned"},
    "official": {"mode": "official", "reference": "round-denoised", "step_rule": "official", "grid": "official",
                 "variance": "fixed"},
}
# Old spellings of a variant key's values, still read (key -> {old: current}): ``mode: reference`` was the official
# code's arithmetic (now ``official``, as ``step_rule``/``grid`` say it; ``reference:`` is the reference image).
VALUE_ALIASES: dict[str, dict[str, str]] = {"mode": {"reference": "official"}}
VARIANT_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("paper", "official"), "reference": ("input", "denoised", "round-denoised"),
    "step_rule": ("posterior", "official"), "grid": ("respaced", "official"), "variance": ("learned", "fixed")}


def resolve_variant(variant: str, **keys: str | None) -> dict[str, str]:
    """The effective settings of ``variant`` with the explicitly given ``keys`` (not ``None``) overriding it.

    Precedence: an explicit key wins over the preset (a documented override, e.g. ``variant="official",
    step_rule="posterior"`` for an ablation); ``None`` means "as the variant says". Only the keys passed
    are returned, old spellings (:data:`VALUE_ALIASES`) in their current one. Unknown variants or values raise
    :class:`UsageError`.
    """
    if variant not in VARIANTS:
        raise UsageError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    out = {}
    for key, value in keys.items():
        value = current_value(key, value)
        if value is not None and value not in VARIANT_CHOICES[key]:
            raise UsageError(f"{key} must be {' or '.join(map(repr, VARIANT_CHOICES[key]))}, got {value!r}")
        out[key] = VARIANTS[variant][key] if value is None else value
    return out


def current_value(key: str, value: Any) -> Any:
    """``value`` of variant key ``key`` in its current spelling (``mode: reference`` → ``official``)."""
    return VALUE_ALIASES.get(key, {}).get(value, value) if isinstance(value, str) else value


# ------------------------------------------------------------------------------------- the checks
# One check per purifier setting, and one text per mistake. Two layers take these settings and both must check
# them, because a purifier can be built without a config: PurifierConfig.__post_init__ (names "purifier.<key>",
# so a config is refused when it is read, before the first sample) and the Purifier/DiffPure/FreqPure
# constructors (names "<key>"). Both call these functions; neither has checks of its own for these settings.
def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices`` (``method``: :data:`METHODS`, ``sampler``: :data:`SAMPLERS`,
    ``precision``: :data:`freqpure.runtime.PRECISIONS`, ``variant``: :data:`VARIANTS`)."""
    if not isinstance(value, str) or value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_distance(value: Any, name: str, *, optional: bool = False) -> float | None:
    """A finite number >= 0 (a radius, δ); ``None`` (YAML ``null``: the edit disabled) when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number or null" if optional else "a number"
        raise UsageError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{name} must be a finite number >= 0{' or null' if optional else ''}, got {value}")
    return value


def check_flag(value: Any, name: str) -> bool:
    """``value`` if it is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False, got {value!r}")
    return value


def check_step_index(value: Any, name: str, num_steps: int = 1000) -> int:
    """An integer step index in ``0..num_steps - 1`` (``reference_t``)."""
    value = check_int(value, name)
    if not 0 <= value < num_steps:
        raise UsageError(f"{name} must be a step index in 0..{num_steps - 1}, got {value}")
    return value


def check_rounds(rounds: Any, name: str = "rounds", grid: str | None = None) -> list[PurificationRound]:
    """The plan ``rounds`` parsed (:func:`freqpure.schedules.parse_rounds`), every round checked on ``grid`` when
    one is given (the official grid needs the steps to divide t*)."""
    try:
        parsed = parse_rounds(rounds)
        for rnd in parsed if grid is not None else ():
            round_timesteps(rnd, grid)
    except ValueError as err:
        hint = ""
        if isinstance(rounds, str) and rounds.isdigit():
            hint = (" (YAML 1.1 reads an unquoted 100:20 as the base-60 number 6020: quote it, "
                    "e.g. rounds: \"100:20\")")
        raise UsageError(f"{name}: {err}{hint}") from None
    return parsed


def check_variant_keys(variant: str, sampler: str, **keys: str | None) -> dict[str, str]:
    """The effective values of the variant keys given (:func:`resolve_variant`; ``step_rule`` and ``grid`` must be
    among them), refusing what no sampler runs: ``sampler: sde`` (no discrete grid) with the official step or grid,
    and an explicit ``variance: learned`` with the official step (which uses the fixed posterior variance)."""
    settings = resolve_variant(variant, **keys)
    if sampler == "sde" and (settings["step_rule"] != "posterior" or settings["grid"] != "respaced"):
        raise UsageError(f"sampler 'sde' has no discrete grid or official step: variant={variant!r} needs "
                         f"sampler 'ddpm' or 'ddim' (step_rule={settings['step_rule']!r}, "
                         f"grid={settings['grid']!r})")
    if settings["step_rule"] == "official" and keys.get("variance") == "learned":
        raise UsageError("variance 'learned' needs step_rule 'posterior': the official step uses the fixed "
                         "posterior variance")
    return settings

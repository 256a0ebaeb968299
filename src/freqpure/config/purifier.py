"""The one description of a purifier: :class:`PurifierConfig`, the named presets as configs (:func:`preset`), and
:func:`build_purifier`, which turns a config into a module.

Every check of a setting is the one in :mod:`freqpure.presets` that the purifiers' constructors call too.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from freqpure.config.io import from_dict
from freqpure.errors import UsageError
from freqpure.presets import (
    DEFAULTS,
    METHODS,
    PRESETS,
    SAMPLERS,
    VALUE_ALIASES,
    VARIANTS,
    check_choice,
    check_distance,
    check_flag,
    check_rounds,
    check_step_index,
    check_variant_keys,
    current_value,
    resolve_variant,
)
from freqpure.runtime import PRECISIONS

__all__ = ["PurifierConfig", "build_purifier", "preset", "with_resolved_precision", "spelled_before"]

T = TypeVar("T")


@dataclass
class PurifierConfig:
    """A purifier. ``method``: ``freqpure``, ``diffpure`` or ``none``.

    ``rounds`` is the plan ``"t_star:steps"`` (comma-separated rounds, ``*k`` repeats), e.g.
    ``"100:20"`` or the official CIFAR-10 v2 plan ``"20:5*5,50:5*5"``. Radii are in
    frequency-index units of the centred spectrum (``null`` disables that edit).

    ``variant`` names a preset: ``paper`` (default; the method as the paper states it) or ``official``
    (the official code's arithmetic: ``mode: official``, ``reference: round-denoised``,
    ``step_rule: official``, ``grid: official``, ``variance: fixed``). The keys ``mode``, ``reference``,
    ``step_rule``, ``grid`` and ``variance`` are ``null`` by default, meaning "as the variant says"; a
    key given explicitly overrides the variant (an ablation, e.g. ``variant: official`` with
    ``step_rule: posterior``). A key equal to its variant's value is stored as ``null`` (one canonical
    form, so a saved config compares equal however it was written); :meth:`effective` gives the values.
    ``mode`` is the exchange arithmetic (``paper`` or ``official``; ``reference`` is its old spelling, still
    read), ``reference`` the reference image (``input``, ``denoised``, ``round-denoised``).

    The defaults are the library's (:data:`freqpure.presets.DEFAULTS`); :func:`preset` gives
    the named settings (``paper``, ``official-v2``, ``bundled-table``, ...).
    """

    method: str = DEFAULTS["method"]
    diffusion: str = DEFAULTS["diffusion"]
    rounds: str = DEFAULTS["rounds"]
    sampler: str = DEFAULTS["sampler"]
    amp_radius: float | None = DEFAULTS["amp_radius"]
    phase_radius: float | None = DEFAULTS["phase_radius"]
    delta: float = DEFAULTS["delta"]
    mode: str | None = None
    variant: str = DEFAULTS["variant"]
    step_rule: str | None = None
    grid: str | None = None
    variance: str | None = None
    reference: str | None = None
    reference_t: int = DEFAULTS["reference_t"]
    recompute_reference: bool = False
    clip_x0: bool = False
    # Arithmetic of the ε-model (and, in ``evaluate``, of the classifier): auto | fp32 | bf16. ``auto`` is bf16
    # on CPUs with AMX-BF16 and on CUDA with bf16, else fp32; commands record the resolved value.
    precision: str = "auto"

    def __post_init__(self) -> None:
        """Check every setting with the same functions the purifiers' constructors call (:mod:`freqpure.presets`),
        so that a config is refused when it is read, with the constructor's words, before the first sample."""
        check_choice(self.method, "purifier.method", METHODS)
        check_choice(self.sampler, "purifier.sampler", SAMPLERS)
        for key in ("amp_radius", "phase_radius", "delta"):
            check_distance(getattr(self, key), f"purifier.{key}", optional=key != "delta")
        check_step_index(self.reference_t, "purifier.reference_t")
        for key in ("recompute_reference", "clip_x0"):
            check_flag(getattr(self, key), f"purifier.{key}")
        check_choice(self.precision, "purifier.precision", PRECISIONS)
        check_choice(self.variant, "purifier.variant", tuple(VARIANTS))
        for key in _VARIANT_KEYS:  # old spellings (mode: reference) in the current one
            setattr(self, key, current_value(key, getattr(self, key)))
        try:
            effective = self.effective()
        except UsageError as err:
            raise UsageError(f"purifier: {err}") from None
        for key in _VARIANT_KEYS:  # canonical form: null = as the variant says
            if effective[key] == VARIANTS[self.variant][key]:
                setattr(self, key, None)
        if self.method != "none":  # what build_purifier passes: the constructor would refuse the same
            check_rounds(str(self.rounds), "purifier.rounds", grid=effective["grid"])
            try:
                check_variant_keys(self.variant, self.sampler, step_rule=self.step_rule, grid=self.grid,
                                   variance=self.variance)
            except UsageError as err:
                raise UsageError(f"purifier: {err}") from None

    def for_method(self, method: str) -> PurifierConfig:
        """The same purifier under another ``method``: the shared settings (model, plan, sampler, variant and its
        keys, ``clip_x0``, precision) kept, FreqPure's own (radii, δ, mode, reference) at their defaults.

        How a comparison builds its DiffPure from its FreqPure (``freqpure analyze``).
        """
        shared = ("diffusion", "rounds", "sampler", "variant", "step_rule", "grid", "variance", "clip_x0", "precision")
        return PurifierConfig(method=method, **{key: getattr(self, key) for key in shared})

    def effective(self) -> dict[str, str]:
        """The values of the variant's keys after the preset and the explicit overrides."""
        return resolve_variant(self.variant, **{k: getattr(self, k) for k in _VARIANT_KEYS})


_VARIANT_KEYS = ("mode", "reference", "step_rule", "grid", "variance")


def spelled_before(config: dict[str, Any], at: str = "purifier") -> dict[str, Any] | None:
    """``config`` (a saved config dict) with the purifier at dotted path ``at`` spelled as before a value was
    renamed (:data:`freqpure.presets.VALUE_ALIASES`: ``mode: official`` was written ``mode: reference``), or
    ``None`` when no renamed value occurs in it.

    Records written under the old spelling carry fingerprints of the config as it was written then; a run folder
    accepts them through the fingerprints of this dict (:func:`freqpure.evaluation.rundir.run_store`)."""
    *parents, leaf = at.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    purifier = node.get(leaf) if isinstance(node, dict) else None
    if not isinstance(purifier, dict):
        return None
    old = {key: {new: was for was, new in spellings.items()} for key, spellings in VALUE_ALIASES.items()}
    changed = {key: old[key][value] for key, value in purifier.items()
               if key in old and isinstance(value, str) and value in old[key]}
    if not changed:
        return None
    out = copy.deepcopy(config)
    node = out
    for part in parents:
        node = node[part]
    node[leaf] = {**purifier, **changed}
    return out


def build_purifier(cfg: PurifierConfig, eps_model: Any = None, *, seed: int = 0, checkpoint: bool = False,
                   device: Any = None):
    """Build the purifier described by ``cfg`` (``None`` for ``method: none``).

    ``eps_model`` defaults to ``load_diffusion(cfg.diffusion)``.
    """
    from freqpure.purifiers import DiffPure, FreqPure

    if cfg.method == "none":
        return None
    if eps_model is None:
        from freqpure.models.registry import load_diffusion

        eps_model = load_diffusion(cfg.diffusion, device=device)
    common = dict(rounds=cfg.rounds, sampler=cfg.sampler, clip_x0=cfg.clip_x0, seed=seed, checkpoint=checkpoint,
                  precision=cfg.precision,
                  variant=cfg.variant, step_rule=cfg.step_rule, grid=cfg.grid, variance=cfg.variance)
    if cfg.method == "diffpure":
        return DiffPure(eps_model, **common)
    return FreqPure(
        eps_model,
        cfg.amp_radius,
        cfg.phase_radius,
        cfg.delta,
        reference=cfg.reference,
        reference_t=cfg.reference_t,
        recompute_reference=cfg.recompute_reference,
        mode=cfg.mode,
        **common,
    )


def with_resolved_precision(cfg: T, device: Any = "cpu") -> T:
    """``cfg`` (a :class:`PurifierConfig` or a config with a ``purifier`` field) with ``precision: auto``
    replaced by what it means on ``device`` (``fp32`` or ``bf16``), the value results files record."""
    from freqpure.runtime import resolve_precision

    if isinstance(cfg, PurifierConfig):
        model = cfg.diffusion if cfg.method != "none" else None  # auto: measured on this model (cached)
        return dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device, model=model))
    return dataclasses.replace(cfg, purifier=with_resolved_precision(cfg.purifier, device))


def preset(name: str, **overrides: Any) -> PurifierConfig:
    """A :class:`PurifierConfig` of preset ``name`` (:data:`freqpure.presets.PRESETS`) with ``overrides`` on top.

    ``freqpure.build_purifier(freqpure.preset("paper"), eps_model)`` is the paper's FreqPure.
    """
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return from_dict(PurifierConfig, {**PRESETS[name].settings, **overrides}, f"preset {name}")

"""The evaluation config: one nested dataclass (data, classifier, purifier, defence, attacks, sanity, seed).

Loaded strictly from YAML (:func:`load_eval_config`; unknown keys are errors that name the key and
list the valid ones), overridable with ``key.sub=value`` (``attacks.0.eps=4/255``), saved next to the
results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freqpure.attacks.settings import EPS_LIMITS, AttackSettings, attack_settings
from freqpure.attacks.types import GradientMode, eps_text, parse_number
from freqpure.config.io import apply_overrides, load_yaml
from freqpure.config.purifier import PurifierConfig
from freqpure.errors import UsageError
from freqpure.evaluation.distributed import check_device_name

__all__ = [
    "AttackConfig",
    "ClassifierConfig",
    "DataConfig",
    "DefenceConfig",
    "EvalConfig",
    "SanityConfig",
    "load_eval_config",
    "parse_number",
    "eps_text",
    "EPS_LIMITS",
]

SEED_MAX = 2**63 - 1  # = freqpure.purifiers.SEED_MAX: seeds purify accepts are the seeds evaluate accepts


@dataclass
class DataConfig:
    """Evaluation images: a deterministic class-balanced subset of ``n`` images.

    ``dataset``: ``cifar10`` (looked up as :func:`freqpure.data.find_cifar10_dir` does) or
    ``imagenet`` (an ImageFolder of the validation set at ``data_dir``, resized/cropped to ``image_size``).
    """

    dataset: str = "cifar10"
    split: str = "test"
    n: int = 64
    subset_seed: int = 0
    data_dir: str | None = None
    image_size: int = 256

    def __post_init__(self) -> None:
        if self.dataset not in ("cifar10", "imagenet"):
            raise UsageError(f"data.dataset must be 'cifar10' or 'imagenet', got {self.dataset!r}")
        if self.dataset == "cifar10" and self.split not in ("train", "test"):
            raise UsageError(f"data.split must be 'train' or 'test' for cifar10, got {self.split!r}")
        if self.n < 1:
            raise UsageError(f"data.n must be >= 1, got {self.n}")
        if not 0 <= self.subset_seed <= SEED_MAX:
            raise UsageError(f"data.subset_seed must be in 0..{SEED_MAX}, got {self.subset_seed}")
        if self.image_size < 1:
            raise UsageError(f"data.image_size must be >= 1, got {self.image_size}")


@dataclass
class ClassifierConfig:
    """A registry name or checkpoint path (see ``freqpure.load_classifier``); input images in [0, 1]."""

    name: str = "cifar10-resnet-small"


@dataclass
class DefenceConfig:
    """How the defended classifier decides: ``ensemble`` purifications per image and a ``vote``.

    ``purify_size``: resize images to this before purification (``null``: as loaded).
    ``classifier_input``: ``as_is`` (the classifier takes [0, 1] images and handles its own
    resizing/normalisation, as registry classifiers do) or ``imagenet224`` (bilinear resize to 224 and
    ImageNet mean/std, for raw torchvision-style networks).
    ``max_batch``: at most this many images per purifier call (``null``: ensemble × batch at once).
    """

    ensemble: int = 1
    vote: str = "majority"
    purify_size: int | None = None
    classifier_input: str = "as_is"
    max_batch: int | None = None

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise UsageError(f"defence.ensemble must be >= 1, got {self.ensemble}")
        if self.vote not in ("majority", "softmax", "logits"):
            raise UsageError(f"defence.vote must be 'majority', 'softmax' or 'logits', got {self.vote!r}")
        if self.classifier_input not in ("as_is", "imagenet224"):
            raise UsageError(
                f"defence.classifier_input must be 'as_is' or 'imagenet224', got {self.classifier_input!r}"
            )
        if self.purify_size is not None and self.purify_size < 1:
            raise UsageError(f"defence.purify_size must be >= 1 or null, got {self.purify_size}")
        if self.max_batch is not None and self.max_batch < 1:
            raise UsageError(f"defence.max_batch must be >= 1 or null (no chunking), got {self.max_batch}")


class _AttackSettingsType(type):
    """``isinstance(x, AttackConfig)``: whether ``x`` is an attack's settings."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, AttackSettings)


class AttackConfig(metaclass=_AttackSettingsType):
    """One attack: ``AttackConfig(name=..., **settings)`` builds the typed settings of the registered attack
    ``name`` names (:func:`freqpure.attacks.registry.attack_names`; default ``pgd``) and validates them
    (:func:`freqpure.attacks.settings.attack_settings`): ``pgd`` (PGD-EOT, :class:`~freqpure.attacks.pgd.PGDSettings`),
    ``bpda`` (PGD-EOT with ``gradient: bpda``), ``band-pgd`` (PGD-EOT with the perturbation restricted to the
    spectrum disc of radius ``band_max_radius``, :class:`~freqpure.attacks.band.BandPGDSettings`) or
    ``autoattack`` (``version``: ``standard`` or ``rand``, :class:`~freqpure.attacks.autoattack.AutoAttackSettings`).
    A key the attack does not have is an error naming the attack and the key. Each attack labels itself and
    states its protocol (:mod:`freqpure.attacks.registry`).

    Shared by every attack (:class:`~freqpure.attacks.settings.AttackSettings`): ``norm``, ``eps`` (fractions
    such as ``8/255``), ``eot`` (draws per gradient; AutoAttack averages the defence's softmax over ``eot``
    draws per forward), ``loss``, ``gradient`` (``full``, ``surrogate`` differentiating ``surrogate_rounds``,
    ``adjoint`` for the VP-SDE sampler, or ``bpda``) and ``label``. The surrogate must keep the defence's noise
    levels unless ``surrogate_match: false``: then any plan is allowed and the attack is labelled and recorded
    as a *mismatched* surrogate (the official v2 evaluation: ``gradient: surrogate, surrogate_rounds: "50:1",
    surrogate_match: false, random_start: false, keep: last, step_size: 0.007, steps: 200, eot: 20`` against
    ``20:5*5,50:5*5``).
    """

    def __new__(cls, **settings: Any) -> AttackSettings:  # type: ignore[misc]
        return attack_settings(settings)

    @staticmethod
    def from_config(data: dict[str, Any] | None, where: str = "") -> AttackSettings:
        """``from_dict(AttackConfig, data)``: :func:`~freqpure.attacks.settings.attack_settings`."""
        return attack_settings(data, where)


@dataclass
class SanityConfig:
    """Built-in checks (reported in results.json).

    ``undefended``: attack the bare classifier with PGD (``undefended_steps`` steps, same norm and
    eps) — it must fall to at most ``undefended_max_accuracy``. ``gradients``: the first attack
    gradient through the purifier must be finite and non-zero. ``eps_sweep``: eps multipliers run on
    the first ``sweep_samples`` samples with the first attack; robust accuracy should fall as eps grows
    (a warning otherwise: a sign of gradient masking); when it is already 0 at the base eps the sweep
    is reported as "not informative" (``falls: null``). ``[]`` disables the sweep.
    """

    enabled: bool = True
    undefended: bool = True
    undefended_steps: int = 20
    undefended_max_accuracy: float = 0.05
    gradients: bool = True
    eps_sweep: list[float] = field(default_factory=lambda: [2.0])
    sweep_samples: int = 8

    def __post_init__(self) -> None:
        # Checked here, before the first sample: a bad value must not surface only at finalize.
        if self.undefended_steps < 1:
            raise UsageError(f"sanity.undefended_steps must be >= 1, got {self.undefended_steps}")
        if not 0 <= self.undefended_max_accuracy <= 1:
            raise UsageError(f"sanity.undefended_max_accuracy must be in [0, 1], got {self.undefended_max_accuracy}")
        if self.sweep_samples < 1:
            raise UsageError(f"sanity.sweep_samples must be >= 1, got {self.sweep_samples}")
        bad = [m for m in self.eps_sweep if not (math.isfinite(m) and m > 0)]
        if bad:
            raise UsageError(f"sanity.eps_sweep multipliers must be finite and > 0, got {bad} "
                             "(use [] to disable the sweep)")


@dataclass
class EvalConfig:
    """A whole evaluation. ``seed`` fixes every random draw: batch ``b`` uses noise derived from
    ``(seed, b)`` only (``noise_addressing: image-v1``: image ``i`` from ``(seed, i)``), so results do not
    depend on the number of processes or on resuming. ``batch_size``: images per batch, or ``auto``
    (``image-v1`` only: chosen per invocation, :mod:`freqpure.evaluation.batching`)."""

    name: str = "eval"
    seed: int = 0
    batch_size: int | str = 8
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    purifier: PurifierConfig = field(default_factory=PurifierConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    attacks: list[AttackSettings] = field(default_factory=lambda: [AttackConfig()])
    sanity: SanityConfig = field(default_factory=SanityConfig)
    # The noise scheme (freqpure.noise.NOISE_SCHEMES); null = freqpure.samplers.NOISE_SCHEME. Left out of the
    # saved config while null, so configs and record fingerprints written before the key existed still match.
    noise_scheme: str | None = field(default=None, metadata={"omit_none": True})
    # How the run's streams are addressed (freqpure.noise.NOISE_ADDRESSINGS): batch-v1 (null, the default of every
    # recorded run: per batch) or image-v1 (per image: numbers independent of batch_size). Omitted while null.
    noise_addressing: str | None = field(default=None, metadata={"omit_none": True})

    def __post_init__(self) -> None:
        if self.noise_scheme is not None:
            from freqpure.noise import check_noise_scheme

            self.noise_scheme = check_noise_scheme(self.noise_scheme)
        if not 0 <= self.seed <= SEED_MAX:  # the range purify and the purifiers accept
            raise UsageError(f"seed must be in 0..{SEED_MAX}, got {self.seed}")
        check_device_name(self.device, "device")
        if not self.attacks:
            raise UsageError("attacks is empty: give at least one attack")
        self.attacks = [a.spec.validate(a) for a in self.attacks]  # each attack's checks; a normalised copy
        _check_batching(self)
        labels = [a.display() for a in self.attacks]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise UsageError(f"attack labels must be unique, repeated: {dupes}; set attacks.N.label")
        if self.purifier.method != "none":
            defence_t = [r.t_star for r in _rounds(self.purifier.rounds, "purifier.rounds")]
            for a in self.attacks:
                if a.gradient == GradientMode.SURROGATE.value and not a.surrogate_match:
                    _rounds(a.surrogate_rounds, "surrogate_rounds")  # any plan, but a valid one
                if a.gradient == GradientMode.SURROGATE.value and a.surrogate_match:
                    surrogate_t = [r.t_star for r in _rounds(a.surrogate_rounds, "surrogate_rounds")]
                    if surrogate_t != defence_t:
                        raise UsageError(f"attack {a.display()}: surrogate_rounds {a.surrogate_rounds!r} must keep the "
                                         f"defence's noise levels t* = {defence_t} (only fewer steps per round), "
                                         "or set surrogate_match: false for a mismatched surrogate")
                if a.gradient == GradientMode.ADJOINT.value and self.purifier.sampler != "sde":
                    raise UsageError(f"attack {a.display()}: gradient 'adjoint' needs purifier.sampler=sde, "
                                     f"got {self.purifier.sampler!r}")


def run_noise_scheme(cfg: EvalConfig) -> str:
    """The noise scheme a run draws with: its config's ``noise_scheme``, else :data:`freqpure.noise.NOISE_SCHEME`."""
    from freqpure.noise import NOISE_SCHEME

    return cfg.noise_scheme or NOISE_SCHEME


def _check_batching(cfg: EvalConfig) -> None:
    """``batch_size`` (an integer >= 1, or ``auto`` under ``image-v1``) and ``noise_addressing`` (with its scheme
    and attacks whose rows do not depend on their batch); normalises ``noise_addressing``."""
    from freqpure.noise import BATCH_ADDRESSING, IMAGE_ADDRESSING, check_noise_addressing

    addressing = check_noise_addressing(cfg.noise_addressing, run_noise_scheme(cfg))
    cfg.noise_addressing = None if cfg.noise_addressing is None else addressing
    size = cfg.batch_size
    if size != "auto" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UsageError(f"batch_size must be an integer >= 1 or auto, got {size!r}")
    if size == "auto" and addressing == BATCH_ADDRESSING:
        raise UsageError(f"batch_size: auto needs noise_addressing: {IMAGE_ADDRESSING} (with noise_scheme: "
                         f"counter-v1): under {BATCH_ADDRESSING} a batch's noise depends on its size, so the numbers "
                         "would depend on the size chosen")
    if addressing == IMAGE_ADDRESSING:
        for a in cfg.attacks:
            if not getattr(a.spec, "per_image", False):
                raise UsageError(f"attack {a.display()}: noise_addressing {IMAGE_ADDRESSING} needs attacks whose "
                                 f"rows do not depend on their batch, and {a.spec.name!r} does not (docs/usage.md, "
                                 "noise addressing); use pgd or bpda, or batch-v1")


def _rounds(spec: str | None, where: str):
    from freqpure.schedules import parse_rounds

    try:
        return parse_rounds(spec or "")
    except ValueError as err:
        hint = ""
        if spec and str(spec).isdigit():
            hint = " (YAML 1.1 reads an unquoted 100:20 as the base-60 number 6020: quote it, e.g. rounds: \"100:20\")"
        raise UsageError(f"{where}: {err}{hint}") from None


def load_eval_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EvalConfig:
    """YAML file (strict) + ``key=value`` overrides → :class:`EvalConfig` (defaults when ``path`` is None)."""
    cfg = load_yaml(EvalConfig, path) if path is not None else EvalConfig()
    return apply_overrides(cfg, overrides)

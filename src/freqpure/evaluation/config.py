"""The evaluation config: one nested dataclass (data, classifier, purifier, defence, attacks, sanity, seed).

Loaded strictly from YAML (:func:`load_eval_config`; unknown keys are errors that name the key and
list the valid ones), overridable with ``key.sub=value`` (``attacks.0.eps=4/255``), saved next to the
results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from freqpure.attacks.types import GradientMode, Loss, Norm, parse_enum
from freqpure.config import PurifierConfig, apply_overrides, load_yaml
from freqpure.errors import UsageError

__all__ = [
    "AttackConfig",
    "ClassifierConfig",
    "DataConfig",
    "DefenceConfig",
    "EvalConfig",
    "SanityConfig",
    "load_eval_config",
    "parse_number",
    "ATTACK_NAMES",
    "EPS_LIMITS",
]

ATTACK_NAMES = ("pgd", "bpda", "autoattack")
# Radii above these are not adversarial robustness any more (pixel units of [0, 1] images).
EPS_LIMITS = {Norm.LINF: 0.5, Norm.L2: 50.0}


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
        if self.n < 1:
            raise UsageError(f"data.n must be >= 1, got {self.n}")


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


@dataclass
class AttackConfig:
    """One attack. ``name``: ``pgd`` (PGD-EOT), ``bpda`` (PGD-EOT with ``gradient: bpda``) or
    ``autoattack`` (``version``: ``standard`` or ``rand``).

    ``eps`` and ``step_size`` accept fractions (``8/255``). ``gradient``: ``full``, ``surrogate``
    (differentiate ``surrogate_rounds``), ``adjoint`` (VP-SDE sampler) or ``bpda``. ``eot``: draws per
    gradient (PGD; AutoAttack rand uses ``eot`` too, 20 by default). ``eot_batch``: at most this many
    images per purifier call while attacking. ``keep``: ``best`` iterate by the EOT loss, or ``last``.
    """

    name: str = "pgd"
    norm: str = "linf"
    eps: float | str = 8 / 255
    steps: int = 20
    step_size: float | str | None = None
    eot: int = 1
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    keep: str = "best"
    gradient: str = "full"
    surrogate_rounds: str | None = None
    version: str = "rand"
    eot_batch: int | None = None
    label: str | None = None
    autoattack_iters: int | None = None  # AutoAttack only: iterations per attack (None: its own 100); smoke runs

    def __post_init__(self) -> None:
        if self.name not in ATTACK_NAMES:
            raise UsageError(f"unknown attack {self.name!r}; valid: {', '.join(ATTACK_NAMES)}")
        norm = parse_enum(Norm, self.norm, "norm (attacks.norm)")
        self.norm = norm.value
        self.eps = parse_number(self.eps, "attack eps")
        limit = EPS_LIMITS[norm]
        if not (0 < self.eps <= limit and math.isfinite(self.eps)):
            raise UsageError(f"attack eps={self.eps:g} is out of range for {norm.value}: need 0 < eps <= {limit:g} "
                             "(pixel units of [0, 1] images; e.g. 8/255 for L-inf, 0.5 for L2)")
        if self.step_size is not None:
            self.step_size = parse_number(self.step_size, "attack step_size")
            if not self.step_size > 0:
                raise UsageError(f"attack step_size must be > 0, got {self.step_size}")
        for key in ("steps", "eot", "restarts"):
            if getattr(self, key) < 1:
                raise UsageError(f"attack {key} must be >= 1, got {getattr(self, key)}")
        self.loss = parse_enum(Loss, self.loss, "loss (attacks.loss)").value
        self.gradient = parse_enum(GradientMode, self.gradient, "gradient mode (attacks.gradient)").value
        if self.name == "bpda":
            if self.gradient not in (GradientMode.BPDA.value, GradientMode.FULL.value):
                raise UsageError(f"attack 'bpda' uses gradient 'bpda', got gradient={self.gradient!r}")
            self.gradient = GradientMode.BPDA.value
        if self.gradient == GradientMode.SURROGATE.value and not self.surrogate_rounds:
            raise UsageError("gradient 'surrogate' needs surrogate_rounds (e.g. '100:1': same t*, 1 step)")
        if self.keep not in ("best", "last"):
            raise UsageError(f"attack keep must be 'best' or 'last', got {self.keep!r}")
        if self.version not in ("standard", "rand"):
            raise UsageError(f"unknown AutoAttack version {self.version!r}; valid: standard, rand")
        if self.autoattack_iters is not None and (self.name != "autoattack" or self.autoattack_iters < 1):
            raise UsageError("autoattack_iters applies to AutoAttack only and must be >= 1, "
                             f"got {self.autoattack_iters}")
        if self.eot_batch is not None and self.eot_batch < 1:
            raise UsageError(f"attack eot_batch must be >= 1, got {self.eot_batch}")

    @property
    def norm_enum(self) -> Norm:
        return Norm(self.norm)

    def display(self) -> str:
        """A readable label, e.g. ``pgd-linf-8/255-full-eot20``."""
        if self.label:
            return self.label
        eps = eps_text(self.eps)
        if self.name == "autoattack":
            iters = f"-iters{self.autoattack_iters}" if self.autoattack_iters else ""  # not standard AutoAttack
            return f"autoattack-{self.version}-{self.norm}-{eps}-{self.gradient}{iters}"
        return f"{self.name}-{self.norm}-{eps}-{self.gradient}-eot{self.eot}"


@dataclass
class SanityConfig:
    """Built-in checks (reported in results.json).

    ``undefended``: attack the bare classifier with PGD (``undefended_steps`` steps, same norm and
    eps) — it must fall to at most ``undefended_max_accuracy``. ``gradients``: the first attack
    gradient through the purifier must be finite and non-zero. ``eps_sweep``: eps multipliers run on
    the first ``sweep_samples`` samples with the first attack; robust accuracy should fall as eps grows
    (a warning otherwise: a sign of gradient masking). ``[]`` disables the sweep.
    """

    enabled: bool = True
    undefended: bool = True
    undefended_steps: int = 20
    undefended_max_accuracy: float = 0.05
    gradients: bool = True
    eps_sweep: list[float] = field(default_factory=lambda: [2.0])
    sweep_samples: int = 8


@dataclass
class EvalConfig:
    """A whole evaluation. ``seed`` fixes every random draw: batch ``b`` uses noise derived from
    ``(seed, b)`` only, so results do not depend on the number of processes or on resuming."""

    name: str = "eval"
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    purifier: PurifierConfig = field(default_factory=PurifierConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    attacks: list[AttackConfig] = field(default_factory=lambda: [AttackConfig()])
    sanity: SanityConfig = field(default_factory=SanityConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.attacks:
            raise UsageError("attacks is empty: give at least one attack")
        labels = [a.display() for a in self.attacks]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise UsageError(f"attack labels must be unique, repeated: {dupes}; set attacks.N.label")
        if self.purifier.method != "none":
            defence_t = [r.t_star for r in _rounds(self.purifier.rounds, "purifier.rounds")]
            for a in self.attacks:
                if a.gradient == GradientMode.SURROGATE.value:
                    surrogate_t = [r.t_star for r in _rounds(a.surrogate_rounds, "surrogate_rounds")]
                    if surrogate_t != defence_t:
                        raise UsageError(f"attack {a.display()}: surrogate_rounds {a.surrogate_rounds!r} must keep the "
                                         f"defence's noise levels t* = {defence_t} (only fewer steps per round)")
                if a.gradient == GradientMode.ADJOINT.value and self.purifier.sampler != "sde":
                    raise UsageError(f"attack {a.display()}: gradient 'adjoint' needs purifier.sampler=sde, "
                                     f"got {self.purifier.sampler!r}")


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

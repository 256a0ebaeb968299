"""Settings of the two training tasks (dataclasses, loaded strictly by :mod:`freqpure.config`).

The field names are part of the checkpoint format: ``<run_dir>/config.json`` and the checkpoint's
``config`` entry are ``dataclasses.asdict`` of these classes, and a resume compares them field by field (a
checkpoint written before ``amp`` became ``precision`` is read through :func:`freqpure.config.upgrade_keys`).
"""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

from freqpure.errors import UsageError
from freqpure.runtime import PRECISIONS

__all__ = ["DiffusionTrainConfig", "ClassifierTrainConfig", "PRECISION_CHOICES", "AMP_CHOICES", "LR_SCHEDULES",
           "precision_of_amp"]

# The arithmetic of a training run: the library's precision names (freqpure.runtime.PRECISIONS) less "auto", whose
# meaning depends on the machine, while a run must keep one arithmetic over its resumes.
PRECISION_CHOICES = tuple(p for p in PRECISIONS if p != "auto")
AMP_CHOICES = ("bf16", "none")  # the deprecated key amp: bf16 -> precision bf16, none -> precision fp32
LR_SCHEDULES = ("constant", "cosine")


def precision_of_amp(amp: object) -> str:
    """The ``precision`` the deprecated ``amp`` value means (``bf16`` → ``bf16``, ``none`` → ``fp32``)."""
    if amp not in AMP_CHOICES:
        raise UsageError(f"amp must be 'bf16' or 'none', got {amp!r}")
    return "bf16" if amp == "bf16" else "fp32"


def _amp_alias(value: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Read the deprecated key ``amp`` as ``precision`` (for :func:`freqpure.config.from_dict`)."""
    return {"precision": precision_of_amp(value)}


def _check_common(cfg: Any, amp: str | None) -> None:
    if amp is not None:  # the deprecated keyword: amp="none" is precision="fp32"
        precision = precision_of_amp(amp)
        if cfg.precision not in (precision, "bf16"):
            raise UsageError(f"amp={amp!r} (the old spelling of precision) and precision={cfg.precision!r} disagree; "
                             "give precision only")
        cfg.precision = precision
    if cfg.precision not in PRECISION_CHOICES:
        raise UsageError(f"precision must be {' or '.join(PRECISION_CHOICES)} (a training run keeps one arithmetic: "
                         f"no auto), got {cfg.precision!r}")
    for key in ("batch_size", "log_every", "ckpt_every"):
        if getattr(cfg, key) < 1:
            raise UsageError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise UsageError(f"lr must be a finite number > 0, got {cfg.lr}")
    if not 0 <= cfg.seed <= 2**63 - 1:
        raise UsageError(f"seed must be in 0..{2**63 - 1}, got {cfg.seed}")


@dataclass
class DiffusionTrainConfig:
    """ε-prediction DDPM training on the CIFAR-10 train split (linear β 1e-4..2e-2, 1000 steps).

    Each batch draws its step indices uniformly from 0..t_max-1; with t_low_frac > 0 that share of the
    batch draws from 0..t_low_max-1 instead (t_low_frac = 0: plain DDPM). t_max < 1000 trains a
    purification-range model (cifar10-ddpm-pure: t_max = 200), which purifiers refuse to use beyond
    t* = t_max. lr_schedule: "constant" after the linear warm-up, or "cosine" decay to lr_min at
    steps. init_from: start from a bundled diffusion model's (or a .safetensors file's) weights.
    """

    name: str = "cifar10-ddpm-small"
    arch: str = "small-unet"
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "base": 32,
            "mults": [1, 2, 2, 2],
            "num_res_blocks": 2,
            "attn_levels": [2],
            "dropout": 0.0,
        }
    )
    steps: int = 1_000_000  # effectively "until stopped": the LR is constant after warm-up
    batch_size: int = 64
    lr: float = 4e-4
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    t_low_frac: float = 0.5
    t_low_max: int = 400
    t_max: int = 1000
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    init_from: str | None = None
    hflip: bool = True
    precision: str = "bf16"  # bf16 autocast or fp32 (PRECISION_CHOICES)
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 250
    export_every: int = 1000
    eval_images: int = 256
    data_dir: str | None = None
    amp: InitVar[str | None] = None  # deprecated: precision (bf16 -> bf16, none -> fp32)

    ALIASES: ClassVar[dict[str, Any]] = {"amp": _amp_alias}

    def __post_init__(self, amp: str | None) -> None:
        _check_common(self, amp)
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 1 <= self.t_max <= 1000:
            raise UsageError(f"t_max must be in 1..1000, got {self.t_max}")
        if not 0.0 <= self.t_low_frac <= 1.0:
            raise UsageError(f"t_low_frac must be in [0, 1], got {self.t_low_frac}")
        if self.t_low_frac > 0 and not 1 <= self.t_low_max <= 1000:
            raise UsageError(f"t_low_max must be in 1..1000, got {self.t_low_max}")
        if self.steps < 1 or self.export_every < 0:
            raise UsageError(f"steps must be >= 1 and export_every >= 0, got {self.steps}, {self.export_every}")
        if not 0.0 <= self.ema_decay < 1.0:  # NaN fails too: an EMA decay outside [0, 1) never settles
            raise UsageError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for key in ("grad_clip", "lr_min"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                raise UsageError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")


@dataclass
class ClassifierTrainConfig:
    """Fast CIFAR-10 classifier: label smoothing, Nesterov SGD, linear warm-up/decay, flip + translate.

    Purifier-aware fine-tuning: init_from (a bundled classifier name or a .safetensors path) starts
    from trained weights, and purified_data (a freqpure.purified_data.purify_split file of the train
    split) swaps each training image for its purified copy with probability purified_frac before
    augmentation, so the classifier learns the detail a purifier re-draws.
    """

    name: str = "cifar10-resnet-small"
    arch: str = "fast-resnet"
    model: dict[str, Any] = field(default_factory=lambda: {"widths": [64, 256, 256], "stem": 32})
    epochs: int = 20
    batch_size: int = 512
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_frac: float = 0.2
    label_smoothing: float = 0.2
    translate: int = 2
    precision: str = "bf16"  # bf16 autocast or fp32 (PRECISION_CHOICES)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    eval_every_epoch: bool = True
    tta: bool = True
    data_dir: str | None = None
    init_from: str | None = None
    purified_data: str | None = None
    purified_frac: float = 0.5
    amp: InitVar[str | None] = None  # deprecated: precision (bf16 -> bf16, none -> fp32)

    ALIASES: ClassVar[dict[str, Any]] = {"amp": _amp_alias}

    def __post_init__(self, amp: str | None) -> None:
        _check_common(self, amp)
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        for key, low, high in (("momentum", 0.0, 1.0), ("warmup_frac", 0.0, 1.0), ("label_smoothing", 0.0, 1.0)):
            if not low <= getattr(self, key) < high:
                raise UsageError(f"{key} must be in [{low:g}, {high:g}), got {getattr(self, key)}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UsageError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.purified_data and not 0.0 < self.purified_frac <= 1.0:
            raise UsageError(f"purified_frac must be in (0, 1], got {self.purified_frac}")

"""Study configuration: a study, its stages, their settings (clean stages) and runs (evaluate stages)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from freqpure.errors import UsageError
from freqpure.evaluation.clean import SettingConfig
from freqpure.passthrough import PASSTHROUGH_NOISE

__all__ = ["STAGE_KINDS", "RunConfig", "SettingConfig", "StageConfig", "StudyConfig", "load_study_config"]

STAGE_KINDS = ("clean", "evaluate")


@dataclass
class RunConfig:
    """One evaluation run of an ``evaluate`` stage: an evaluation config file (relative to the study
    config's folder) plus ``key=value`` overrides (``set``), paired with run ``compare_to``."""

    name: str = "run"
    config: str = ""
    set: list[str] = field(default_factory=list)
    compare_to: str | None = None


@dataclass
class StageConfig:
    """One stage. ``planned_cpu_hours``: the estimate stated before running (recorded next to the actual).

    ``kind: clean`` uses ``settings``, ``n`` (clean accuracy), ``vote_n`` / ``vote_k`` (vote rows),
    ``passthrough_n``, ``passthrough_eps`` (L-inf size of the band-limited perturbation, e.g. 8/255)
    and ``bands`` (upper band edges in frequency-index units; the last band is everything beyond).
    ``kind: evaluate`` uses ``runs``.
    """

    name: str = "stage"
    title: str = ""
    kind: str = "evaluate"
    planned_cpu_hours: float | None = None
    settings: list[SettingConfig] = field(default_factory=list)
    runs: list[RunConfig] = field(default_factory=list)
    n: int = 1000
    vote_n: int = 256
    vote_k: int = 10
    passthrough_n: int = 256
    passthrough_eps: float | str = "8/255"
    bands: list[float] = field(default_factory=lambda: [3.0, 8.0])
    batch_size: int = 32
    passthrough_noise: str = "per-image-v2"

    def __post_init__(self) -> None:
        from freqpure.evaluation.config import parse_number

        if self.kind not in STAGE_KINDS:
            raise UsageError(f"stage {self.name!r}: kind must be one of {', '.join(STAGE_KINDS)}, got {self.kind!r}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise UsageError(f"stage name {self.name!r} must be a plain folder name")
        parts = self.settings if self.kind == "clean" else self.runs
        other = self.runs if self.kind == "clean" else self.settings
        if not parts:
            what = "settings" if self.kind == "clean" else "runs"
            raise UsageError(f"stage {self.name!r} ({self.kind}) lists no {what}")
        if other:
            raise UsageError(f"stage {self.name!r} is kind {self.kind!r}: it takes "
                             f"{'settings' if self.kind == 'clean' else 'runs'}, not "
                             f"{'runs' if self.kind == 'clean' else 'settings'}")
        names = [p.name for p in parts]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise UsageError(f"stage {self.name!r}: repeated names {dupes}")
        for p in parts:
            if not p.name or "/" in p.name or p.name.startswith("."):
                raise UsageError(f"stage {self.name!r}: {p.name!r} must be a plain folder name")
            if p.compare_to is not None and p.compare_to not in names:
                raise UsageError(f"stage {self.name!r}: {p.name}.compare_to={p.compare_to!r} is not one of {names}")
        for key in ("n", "vote_n", "vote_k", "passthrough_n", "batch_size"):
            if getattr(self, key) < 1:
                raise UsageError(f"stage {self.name!r}: {key} must be >= 1, got {getattr(self, key)}")
        self.passthrough_eps = parse_number(self.passthrough_eps, f"stage {self.name!r} passthrough_eps")
        if not 0 < self.passthrough_eps <= 0.5:
            raise UsageError(f"stage {self.name!r}: passthrough_eps must be in (0, 0.5], got {self.passthrough_eps}")
        if self.passthrough_noise not in PASSTHROUGH_NOISE:
            raise UsageError(f"stage {self.name!r}: passthrough_noise must be one of {', '.join(PASSTHROUGH_NOISE)}, "
                             f"got {self.passthrough_noise!r}")
        if not all(isinstance(b, int | float) and math.isfinite(b) for b in self.bands):
            raise UsageError(f"stage {self.name!r}: bands must be finite numbers, got {self.bands}")
        if not self.bands or any(b <= a for a, b in zip(self.bands, self.bands[1:])) or self.bands[0] < 0:
            raise UsageError(f"stage {self.name!r}: bands must be increasing edges >= 0, got {self.bands}")


@dataclass
class StudyConfig:
    """A study: the two model names every part uses, the data, the device and the stages."""

    name: str = "study"
    classifier: str = "cifar10-resnet-small"
    diffusion: str = "cifar10-ddpm-small"
    device: str = "cpu"
    data_dir: str | None = None
    seed: int = 0
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        from freqpure.evaluation.distributed import check_device_name

        if not self.stages:
            raise UsageError("the study lists no stages: give --config with a study (e.g. configs/study-cifar10.yaml)")
        check_device_name(self.device, "study device")
        names = [s.name for s in self.stages]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise UsageError(f"repeated stage names {dupes}")


def load_study_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """YAML file (strict) + ``key=value`` overrides → :class:`StudyConfig`."""
    from freqpure.config.io import apply_overrides, load_yaml

    return apply_overrides(load_yaml(StudyConfig, path), overrides)

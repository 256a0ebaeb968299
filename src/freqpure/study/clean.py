"""A clean stage's settings as clean runs (:mod:`freqpure.evaluation.clean`): what each setting's run is."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from freqpure.config.purifier import with_resolved_precision
from freqpure.evaluation.clean import CleanRunConfig, CleanSummary, SettingConfig, run_clean
from freqpure.study.config import StageConfig, StudyConfig

__all__ = ["clean_run_config", "run_clean_setting"]


def clean_run_config(stage: StageConfig, setting: SettingConfig, study: StudyConfig) -> CleanRunConfig:
    """The clean run of ``setting`` in ``stage`` (the purifier's ``precision`` resolved on the study's device)."""
    from freqpure.evaluation.distributed import resolve_device

    purifier = with_resolved_precision(setting.purifier, resolve_device(study.device))
    return CleanRunConfig(
        setting=replace(setting, purifier=purifier), classifier=study.classifier, diffusion=study.diffusion,
        seed=study.seed, data_dir=study.data_dir, n=stage.n, vote_n=stage.vote_n, vote_k=stage.vote_k,
        passthrough_n=stage.passthrough_n, passthrough_eps=float(stage.passthrough_eps), bands=list(stage.bands),
        batch_size=stage.batch_size, passthrough_noise=stage.passthrough_noise)


def run_clean_setting(stage: StageConfig, setting: SettingConfig, study: StudyConfig, folder: str | Path, *,
                      classifier: torch.nn.Module, eps_model: torch.nn.Module, device: torch.device,
                      progress: bool = False) -> CleanSummary:
    """Run or resume the clean run of ``setting`` in ``folder`` (:func:`~freqpure.evaluation.clean.run_clean`)."""
    return run_clean(clean_run_config(stage, setting, study), folder, classifier=classifier, eps_model=eps_model,
                     device=device, progress=progress)

"""Resumable training of the bundled CIFAR-10 models: a DDPM ε-model and a fast classifier.

* :mod:`~freqpure.training.loop`: the loop both tasks share (run folder, exact resume, SIGINT/SIGTERM
  checkpoint, checkpoint/export cadence, metrics.jsonl, progress bar);
* :mod:`~freqpure.training.diffusion` and :mod:`~freqpure.training.classifier`: the two tasks;
* :mod:`~freqpure.training.config`: their settings (strict YAML / ``--set`` via :mod:`freqpure.config`);
* :mod:`~freqpure.training.export`: weights files with their construction recipe in the metadata;
* :mod:`~freqpure.training.summary`: a run's key numbers and curves.
"""

from __future__ import annotations

from typing import Any

from freqpure.config.io import from_dict
from freqpure.training.augment import augment_batch, sample_steps
from freqpure.training.classifier import ClassifierTask, evaluate_classifier, train_classifier
from freqpure.training.config import ClassifierTrainConfig, DiffusionTrainConfig
from freqpure.training.diffusion import DiffusionTask, denoise_mse, train_diffusion
from freqpure.training.export import export_classifier, export_diffusion, export_run, save_safetensors
from freqpure.training.loop import CHECKPOINT, load_checkpoint, run_training
from freqpure.training.summary import plot_run, summarize_run

__all__ = [
    "DiffusionTrainConfig",
    "ClassifierTrainConfig",
    "DiffusionTask",
    "ClassifierTask",
    "train_diffusion",
    "train_classifier",
    "run_training",
    "export_run",
    "export_diffusion",
    "export_classifier",
    "save_safetensors",
    "load_checkpoint",
    "evaluate_classifier",
    "denoise_mse",
    "sample_steps",
    "augment_batch",
    "summarize_run",
    "plot_run",
    "config_from_dict",
    "CHECKPOINT",
]


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build a training config from a dict, strictly (unknown keys and wrong types are errors)."""
    return from_dict(cls, d, cls.__name__)

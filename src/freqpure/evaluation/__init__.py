"""Evaluation of (purified) classifiers under adaptive attacks: config, runner, results, sharding."""

from freqpure.evaluation.config import (
    AttackConfig,
    ClassifierConfig,
    DataConfig,
    DefenceConfig,
    EvalConfig,
    SanityConfig,
    load_eval_config,
)
from freqpure.evaluation.results import Results, SampleRecord, read_results, read_samples, wilson_interval
from freqpure.evaluation.runner import evaluate

__all__ = [
    "AttackConfig",
    "ClassifierConfig",
    "DataConfig",
    "DefenceConfig",
    "EvalConfig",
    "Results",
    "SampleRecord",
    "SanityConfig",
    "evaluate",
    "load_eval_config",
    "read_results",
    "read_samples",
    "wilson_interval",
]

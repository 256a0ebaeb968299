"""The FreqPure-vs-DiffPure study: stages of paired measurements, resumable, timed, tabulated, judged.

A study (:class:`StudyConfig`, e.g. ``configs/study-cifar10.yaml``) is a list of stages. A stage is either
``kind: clean`` — clean accuracy after one purification (and, for headline settings, after a majority vote)
plus the low-band passthrough of each purifier setting, each a clean run (:mod:`freqpure.evaluation.clean`;
the stage's settings as runs: :mod:`.clean`; the passthrough math: :mod:`freqpure.passthrough`) — or
``kind: evaluate`` — a set of
``freqpure evaluate`` runs, one sub-folder each (their records: :mod:`.parts`). :mod:`.run` runs and resumes
the parts; :mod:`.tables` writes each stage's table (Wilson intervals, paired exact McNemar tests and
Newcombe intervals against the stage's DiffPure row on the images both have) and the clean-vs-robust plot;
:mod:`.verdict` applies the pre-registered decision rule.

Output layout::

    OUT/study.md                     every stage's table, in order, and the rule's reading
    OUT/clean-vs-robust.png          one point per evaluate part (needs matplotlib)
    OUT/STAGE/stage.md, timing.json  one stage (timing counts every invocation, killed ones included)
    OUT/STAGE/PART/...               an evaluate run dir, or a clean-stage setting
                                     (config.yaml, samples.jsonl, vote.jsonl, summary.json)
"""

from freqpure.passthrough import band_limited_noise, band_passthrough, passthrough_noise
from freqpure.study.clean import clean_run_config, run_clean_setting
from freqpure.study.config import RunConfig, SettingConfig, StageConfig, StudyConfig, load_study_config
from freqpure.study.run import run_study
from freqpure.study.tables import clean_vs_robust_plot, clean_vs_robust_points, stage_markdown

__all__ = [
    "SettingConfig",
    "RunConfig",
    "StageConfig",
    "StudyConfig",
    "load_study_config",
    "band_limited_noise",
    "band_passthrough",
    "passthrough_noise",
    "clean_run_config",
    "run_clean_setting",
    "run_study",
    "stage_markdown",
    "clean_vs_robust_points",
    "clean_vs_robust_plot",
]

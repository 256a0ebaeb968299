"""Every evaluation config in configs/ loads strictly (no unknown keys, valid values) and names known models."""

from __future__ import annotations

from pathlib import Path

import pytest

from freqpure.evaluation import load_eval_config
from freqpure.models.registry import list_models

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Evaluation configs: the top level (train_*.yaml and the study's own study-*.yaml aside) and the study's
# per-stage evaluation configs in configs/study/.
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith(("train_", "study-")))
CONFIGS += sorted((CONFIG_DIR / "study").glob("*.yaml"))


def test_there_are_evaluation_configs() -> None:
    names = {p.stem for p in CONFIGS if p.parent == CONFIG_DIR}
    for defence in ("none", "diffpure", "freqpure"):
        for attack in ("pgd-linf", "pgd-l2", "autoattack-rand", "bpda"):
            for variant in ("published", "bundled"):
                assert f"cifar10-{defence}-{attack}-{variant}" in names
    assert {"imagenet-freqpure-autoattack-linf-published", "imagenet-diffpure-autoattack-linf-published"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_strictly(path: Path) -> None:
    cfg = load_eval_config(path)
    known = set(list_models())
    assert cfg.classifier.name in known
    if cfg.purifier.method != "none":
        assert cfg.purifier.diffusion in known
    assert cfg.name == path.stem
    if path.stem.endswith("-bundled"):
        assert cfg.classifier.name == "cifar10-resnet-small" and cfg.device in ("auto", "cpu")

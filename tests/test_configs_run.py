"""Every evaluation config in configs/ runs end to end, at a tiny size, with stand-in models.

Each evaluation file found in configs/ and configs/study/ at run time (train_*.yaml and the study plan
study-*.yaml aside: see test_training.py and test_study.py) goes through ``freqpure evaluate`` exactly
as a user runs it, shrunk with ``--set`` only: n = 2, 1 attack step, EOT 1, one reverse step per distinct
noise level of the purification plan, ensembles of at most 2. Bundled
models run as they are; a published checkpoint is replaced by a stand-in (its architecture, reduced,
with random weights; see freqpure.models.standins) in a folder that $FREQPURE_CHECKPOINTS points to,
so the registry loads it through the same path, wrapper and preprocessing as the real file. The
ImageNet configs thus purify at 256x256 with an ADM U-Net (learned sigma) and classify with ResNet-50
at 224 with ImageNet normalisation, on an ImageFolder made of real CIFAR-10 test images.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freqpure.cli.main import main
from freqpure.evaluation import load_eval_config
from freqpure.evaluation.config import EvalConfig
from freqpure.models._specs import PUBLISHED
from freqpure.models.bundled import BUNDLED, weights_path
from freqpure.models.standins import write_standin
from freqpure.schedules import parse_rounds

pytestmark = pytest.mark.slow  # 5-40 s per config on one CPU thread

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith(("train_", "study-")))
CONFIGS += sorted((CONFIG_DIR / "study").glob("*.yaml"))  # the study's per-stage evaluation configs


def tiny_overrides(cfg: EvalConfig) -> list[str]:
    """``--set`` values that shrink ``cfg`` to a smoke run and keep its structure (plan, attacks, vote)."""

    def one_step(plan: str) -> str:  # each distinct noise level of the plan once, in order, one reverse step
        levels = [r.t_star for r in parse_rounds(plan)]
        return ",".join(f"{t}:1" for i, t in enumerate(levels) if t not in levels[:i])

    sets = ["data.n=2", "batch_size=2", f"defence.ensemble={min(2, cfg.defence.ensemble)}",
            "sanity.undefended_steps=1", "sanity.sweep_samples=2"]
    if cfg.purifier.method != "none":
        sets.append(f"purifier.rounds={one_step(cfg.purifier.rounds)}")
    for i, attack in enumerate(cfg.attacks):
        sets.append(f"attacks.{i}.eot=1")
        if hasattr(attack, "steps"):  # PGD and its variants
            sets += [f"attacks.{i}.steps=1", f"attacks.{i}.restarts=1"]
        if attack.name == "autoattack":  # AutoAttack has no steps: its own 100 iterations unless told
            sets.append(f"attacks.{i}.autoattack_iters=1")
        if attack.surrogate_rounds:
            sets.append(f"attacks.{i}.surrogate_rounds={one_step(attack.surrogate_rounds)}")
    return sets


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint folder of the stand-ins (each written once per module, when a config first needs it)."""
    return tmp_path_factory.mktemp("standins")


@pytest.fixture(scope="module")
def imagenet_folder(cifar_test_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder with two synset folders of real (CIFAR-10 test) images; the loader resizes them to 256."""
    from freqpure.data import load_cifar10

    x, y = load_cifar10("test", str(cifar_test_tar.parent))
    root = tmp_path_factory.mktemp("imagenet") / "val"
    for k, synset in enumerate(("n01440764", "n01443537")):
        (root / synset).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(np.asarray(y) == k)[:2]):
            Image.fromarray(x[i]).save(root / synset / f"ILSVRC2012_val_{k}{j}.png")
    return root


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_end_to_end(path: Path, standin_dir: Path, imagenet_folder: Path, cifar_test_tar: Path,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_eval_config(path)
    models = [cfg.classifier.name] + ([cfg.purifier.diffusion] if cfg.purifier.method != "none" else [])
    for name in models:
        if name in BUNDLED and not weights_path(name).is_file():
            pytest.skip(f"{path.name} uses bundled model {name!r}, whose weights file is not in this checkout yet")
        assert name in BUNDLED or name in PUBLISHED, f"{path.name} names {name!r}: neither bundled nor published"
        if name in PUBLISHED and not (standin_dir / f"{name}.safetensors").exists():
            write_standin(name, standin_dir)
    monkeypatch.setenv("FREQPURE_CHECKPOINTS", str(standin_dir))
    data_dir = imagenet_folder if cfg.data.dataset == "imagenet" else cifar_test_tar.parent
    sets = [*tiny_overrides(cfg), f"data.data_dir={data_dir}"]
    out = tmp_path / "run"
    args = ["evaluate", "--config", str(path), *[a for s in sets for a in ("--set", s)], "--out", str(out),
            "--no-progress", "--threads", "1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0, f"{path.name} failed; rerun: freqpure {' '.join(args)}"
    standins = {m for m in models if m in PUBLISHED}
    loaded = " ".join(str(w.message) for w in caught if "stand-in" in str(w.message))
    assert all(f"{m}.safetensors" in loaded for m in standins), "a published model did not load its stand-in"
    results = json.loads((out / "results.json").read_text())
    assert results["name"] == path.stem and results["n"] == 2
    assert [a.display() for a in load_eval_config(path, sets).attacks] == list(results["per_attack"])
    assert 0.0 <= results["robust"]["accuracy"] <= results["clean"]["accuracy"] <= 1.0

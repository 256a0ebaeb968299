"""The shipped CIFAR-10 models: every bundled name loads and does its job on real test images.

A missing weights file is a failure (not a skip): the weights must exist before release.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from freqpure.data import eval_subset
from freqpure.models.adapters import EpsModel
from freqpure.models.bundled import (
    ARCHITECTURES,
    BUNDLED,
    WEIGHTS_DIR,
    build_from_file,
    load_bundled_classifier,
    load_bundled_diffusion,
    read_metadata,
    weights_path,
)
from freqpure.purifiers import DiffPure
from freqpure.samplers import StepNoise
from freqpure.schedules import LinearBetaSchedule
from helpers import one_thread

CLASSIFIER_FLOOR = 0.80  # the shipped classifiers reach >= 0.90 on the full test split
PA_MARGIN = 0.03  # measured on these 200 images: see docs/models.md


def _require(name: str) -> Path:
    path = weights_path(name)
    if not path.is_file():
        pytest.fail(
            f"bundled weights {path} are missing: train/export them (docs/models.md) before release", pytrace=False
        )
    return path


@pytest.fixture(scope="module")
def subset(cifar_test_tar: Path):
    return eval_subset(300, seed=0, data_dir=cifar_test_tar.parent)


def test_registry_tables_consistent() -> None:
    for name, entry in BUNDLED.items():
        assert entry["kind"] in {"diffusion", "classifier"}
        assert entry["arch"] in ARCHITECTURES
        assert entry["file"] == f"{name}.safetensors"


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_file_metadata(name: str) -> None:
    meta = read_metadata(_require(name))
    assert meta["freqpure_kind"] == BUNDLED[name]["kind"]
    assert meta["freqpure_arch"] == BUNDLED[name]["arch"]
    assert isinstance(json.loads(meta["freqpure_config"]), dict)
    if BUNDLED[name]["kind"] == "diffusion":  # the trained step range in the file matches the registry's
        assert int(meta.get("freqpure_t_max", "1000")) == BUNDLED[name]["t_max"]


def test_bundled_weights_small_enough() -> None:
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors") if p.stem in BUNDLED)
    assert total <= 25 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10-resnet-small", "cifar10-resnet-small-pa"])
def test_classifier_accuracy(subset, name: str) -> None:
    _require(name)
    model = load_bundled_classifier(name)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        logits = model(subset.x)
    assert logits.shape == (300, 10)
    acc = (logits.argmax(1) == subset.y).float().mean().item()
    assert acc >= CLASSIFIER_FLOOR, f"bundled classifier accuracy {acc:.3f} < {CLASSIFIER_FLOOR}"


@pytest.mark.slow
def test_purifier_aware_classifier_keeps_more_accuracy_after_diffpure(subset) -> None:
    """The fine-tuned classifier loses less on DiffPure-purified clean images than the one it started from."""
    _require("cifar10-resnet-small-pa")
    purifier = DiffPure(load_bundled_diffusion("cifar10-ddpm-small"), t_star=100, steps=5)
    plain, aware = load_bundled_classifier("cifar10-resnet-small"), load_bundled_classifier("cifar10-resnet-small-pa")
    with one_thread(), torch.no_grad():
        x = purifier(subset.x[:200], StepNoise(0))
        acc_plain = (plain(x).argmax(1) == subset.y[:200]).float().mean().item()
        acc_aware = (aware(x).argmax(1) == subset.y[:200]).float().mean().item()
    assert acc_aware >= acc_plain + PA_MARGIN, f"purified accuracy: aware {acc_aware:.3f}, plain {acc_plain:.3f}"


@pytest.mark.slow
def test_diffusion_denoises_at_t100(subset) -> None:
    _require("cifar10-ddpm-small")
    model = load_bundled_diffusion("cifar10-ddpm-small")
    assert isinstance(model, EpsModel) and model.image_size == 32 and not model.training
    x0 = subset.x[:128] * 2 - 1
    a = LinearBetaSchedule().alpha_bar(99).float()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    with torch.no_grad():
        eps_hat = model(xt, torch.full((len(x0),), 99.0))
    assert eps_hat.shape == x0.shape and eps_hat.dtype == torch.float32
    x0_hat = (xt - (1 - a).sqrt() * eps_hat) / a.sqrt()
    mse_denoised = (x0_hat - x0).pow(2).mean().item()
    mse_noisy = (xt / a.sqrt() - x0).pow(2).mean().item()
    assert mse_denoised < 0.5 * mse_noisy, f"denoised MSE {mse_denoised:.4f} vs noisy {mse_noisy:.4f}"


def test_unknown_and_mismatched_names() -> None:
    with pytest.raises(KeyError, match="unknown bundled model 'nope'"):
        load_bundled_diffusion("nope")
    with pytest.raises(ValueError, match="classifier model, not a diffusion"):
        load_bundled_diffusion("cifar10-resnet-small")
    with pytest.raises(ValueError, match="diffusion model, not a classifier"):
        load_bundled_classifier("cifar10-ddpm-small")


def test_mismatched_files(tmp_path: Path) -> None:
    net = ARCHITECTURES["fast-resnet"](widths=[8, 8, 8], stem=4)
    meta = {
        "freqpure_kind": "classifier",
        "freqpure_arch": "fast-resnet",
        "freqpure_config": json.dumps({"widths": [8, 8, 16], "stem": 4}),
    }
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(wrong), metadata=meta)
    with pytest.raises(ValueError, match="weights do not match"):
        build_from_file(wrong)
    with pytest.raises(ValueError, match="expected diffusion"):
        build_from_file(wrong, kind="diffusion")
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(ValueError, match="metadata lacks"):
        build_from_file(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_metadata(junk)
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing.safetensors")

"""Purified copies of a split and purifier-aware classifier fine-tuning, on real CIFAR-10 images."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freqpure.config import PurifierConfig, from_dict, load_settings, to_dict
from freqpure.data import CIFAR10_CLASSES, load_cifar10
from freqpure.models.bundled import build_from_file
from freqpure.models.checkpoint import read_safetensors
from freqpure.models.small import FastResNet, SmallUNet
from freqpure.purified_data import PurifySplitConfig, load_purified, purify_split
from freqpure.purifiers import DiffPure
from freqpure.training import ClassifierTrainConfig, save_safetensors, train_classifier

TINY_UNET = {"base": 8, "mults": [1, 2], "num_res_blocks": 1, "attn_levels": [1], "dropout": 0.0}
TINY_RESNET = {"widths": [8, 16, 16], "stem": 8}


@pytest.fixture(scope="module")
def small_cifar(cifar_test_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder CIFAR-10 copy: 4 real test images per class as ``train/``, 2 others as ``test/``."""
    x, y = load_cifar10("test", str(cifar_test_tar.parent))
    root = tmp_path_factory.mktemp("cifar")
    for c, name in enumerate(CIFAR10_CLASSES):
        idx = np.flatnonzero(y == c)[:6]
        for split, members in (("train", idx[:4]), ("test", idx[4:])):
            (root / split / name).mkdir(parents=True)
            for i in members:
                Image.fromarray(x[i]).save(root / split / name / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_diffusion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny-ddpm.safetensors"
    meta = {"freqpure_kind": "diffusion", "freqpure_arch": "small-unet", "freqpure_config": json.dumps(TINY_UNET)}
    save_safetensors(SmallUNet(**TINY_UNET).state_dict(), path, meta)
    return path


def _config(weights: Path) -> PurifySplitConfig:
    purifier = PurifierConfig(method="diffpure", diffusion=str(weights), rounds="50:2", precision="fp32")
    return PurifySplitConfig(purifier=purifier, chunk=16)


def _old_record(weights: Path) -> dict:
    """The ``config`` metadata the flat PurifySplitConfig (before the purifier was nested) wrote for ``_config``."""
    return {"split": "train", "diffusion": str(weights), "t_star": 50, "steps": 2, "sampler": "ddpm", "seed": 0,
            "chunk": 16, "amp": "none"}


def test_the_old_flat_settings_read_as_the_nested_purifier_and_record_as_before(tmp_path: Path) -> None:
    weights = Path("w.safetensors")
    old = _old_record(weights)
    cfg = from_dict(PurifySplitConfig, old)  # an old YAML's keys
    assert cfg == _config(weights) and cfg.record() == old  # written as files have always recorded it
    assert PurifySplitConfig().record() == {"split": "train", "diffusion": "cifar10-ddpm-small", "t_star": 100,
                                            "steps": 5, "sampler": "ddpm", "seed": 0, "chunk": 256, "amp": "bf16"}
    # old keys one at a time (flags, --set) change one half of the plan or the precision
    one = load_settings(PurifySplitConfig, None, ["steps=3"], {"t_star": 40, "amp": "none", "diffusion": "x"})
    assert (one.purifier.rounds, one.purifier.precision, one.purifier.diffusion) == ("40:3", "fp32", "x")
    assert load_settings(PurifySplitConfig, None, ["precision=fp32"]).purifier.precision == "fp32"
    assert from_dict(PurifySplitConfig, {"purifier": {"rounds": "50:2"}}).purifier.method == "diffpure"  # on default
    with pytest.raises(ValueError, match="give purifier.rounds only"):
        from_dict(PurifySplitConfig, {"purifier": {"rounds": "20:5*2"}, "t_star": 10})
    with pytest.raises(ValueError, match="amp .* must be bf16 or none"):
        from_dict(PurifySplitConfig, {"amp": "fp16"})
    with pytest.raises(ValueError, match="needs a purifier"):
        from_dict(PurifySplitConfig, {"purifier": {"method": "none"}})
    # anything a flat record cannot say is recorded nested, and reads back
    freq = from_dict(PurifySplitConfig, {"purifier": {"method": "freqpure", "rounds": "20:2*2", "precision": "fp32"}})
    assert freq.record()["purifier"] == to_dict(freq.purifier)
    assert from_dict(PurifySplitConfig, freq.record()) == freq


def test_purify_split_is_reproducible_and_resumes(
    small_cifar: Path, tiny_diffusion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tiny_diffusion)
    whole = purify_split(cfg, tmp_path / "whole.safetensors", data_dir=str(small_cifar), progress=False)
    images, info = load_purified(whole, expect_labels=load_cifar10("train", str(small_cifar))[1])
    x, _ = load_cifar10("train", str(small_cifar))
    assert images.shape == x.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert info["config"]["t_star"] == 50 and len(info["diffusion_sha256"]) == 64
    assert 0 < np.abs(images.astype(int) - x).mean() < 128  # purified, not copied, not noise

    # a run killed during its third chunk resumes from the partial file and gives the same bytes
    calls = {"n": 0}
    forward = DiffPure.forward

    def dying(self: DiffPure, *a: object, **k: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(self, *a, **k)

    out = tmp_path / "resumed.safetensors"
    monkeypatch.setattr(DiffPure, "forward", dying)
    with pytest.raises(KeyboardInterrupt):
        purify_split(cfg, out, data_dir=str(small_cifar), progress=False, save_every=1)
    monkeypatch.setattr(DiffPure, "forward", forward)
    assert not out.exists() and (tmp_path / "resumed.safetensors.partial").exists()
    # the partial file records the settings exactly as the flat config did: outputs of older versions resume
    meta = read_safetensors(tmp_path / "resumed.safetensors.partial")[1]
    assert meta["config"] == json.dumps(_old_record(tiny_diffusion), sort_keys=True)
    with pytest.raises(ValueError, match="incomplete"):
        load_purified(tmp_path / "resumed.safetensors.partial")
    with pytest.raises(ValueError, match="other settings"):
        purify_split(replace(cfg, seed=1), out, data_dir=str(small_cifar), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        purify_split(replace(cfg, purifier=replace(cfg.purifier, precision="bf16")), out, data_dir=str(small_cifar),
                     progress=False)
    purify_split(cfg, out, data_dir=str(small_cifar), progress=False)
    assert np.array_equal(load_purified(out)[0], images)
    assert not (tmp_path / "resumed.safetensors.partial").exists()

    with pytest.raises(ValueError, match="labels do not match"):
        load_purified(whole, expect_labels=np.zeros(40, dtype=np.int64))
    with pytest.raises(FileNotFoundError, match="purify-data"):
        load_purified(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable"):
        load_purified(tmp_path / "junk.safetensors")


@pytest.mark.slow
def test_classifier_fine_tunes_from_weights_on_purified_copies(
    small_cifar: Path, tiny_diffusion: Path, tmp_path: Path
) -> None:
    purified = purify_split(
        _config(tiny_diffusion), tmp_path / "p.safetensors", data_dir=str(small_cifar), progress=False
    )
    torch.manual_seed(1)
    init = tmp_path / "init.safetensors"
    meta = {"freqpure_kind": "classifier", "freqpure_arch": "fast-resnet", "freqpure_config": json.dumps(TINY_RESNET)}
    start_state = FastResNet(**TINY_RESNET).state_dict()
    save_safetensors(start_state, init, meta, fp16=False)
    base = ClassifierTrainConfig(
        name="tiny-pa",
        model=dict(TINY_RESNET),
        epochs=2,
        batch_size=8,
        log_every=1,
        eval_every_epoch=False,
        amp="none",
        data_dir=str(small_cifar),
        init_from=str(init),
    )
    # with no step taken the run holds exactly the initial weights
    snap = train_classifier(base, tmp_path / "zero", progress=False, stop_after=0)
    assert all(torch.equal(snap["model"][k], v) for k, v in start_state.items())

    plain = train_classifier(base, tmp_path / "plain", progress=False)
    tuned_cfg = replace(base, purified_data=str(purified), purified_frac=1.0)
    tuned = train_classifier(tuned_cfg, tmp_path / "tuned", progress=False)
    assert plain["step"] == tuned["step"] == 10
    assert not all(torch.equal(plain["model"][k], tuned["model"][k]) for k in plain["model"])
    _, meta_out = build_from_file(tmp_path / "tuned" / "export" / "tiny-pa.safetensors", kind="classifier")
    assert meta_out["freqpure_init_from"] == str(init)
    assert json.loads(meta_out["freqpure_purified_data"])["config"]["steps"] == 2

    with pytest.raises(ValueError, match="purified_frac"):
        train_classifier(replace(tuned_cfg, purified_frac=0.0), tmp_path / "bad-frac", progress=False)
    with pytest.raises(ValueError, match="do not fit"):
        train_classifier(replace(base, model={"widths": [8, 16, 32], "stem": 8}), tmp_path / "bad", progress=False)


def test_fast_resnet_flip_tta_is_mirror_invariant_in_eval_only() -> None:
    torch.manual_seed(0)
    plain = FastResNet(**TINY_RESNET)
    tta = FastResNet(**TINY_RESNET, flip_tta=True)
    tta.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 32, 32)
    plain.eval(), tta.eval()
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(3))) / 2
        assert torch.allclose(tta(x), expected, atol=1e-6)
        assert torch.allclose(tta(x.flip(3)), tta(x), atol=1e-6)
        tta.train(), plain.train()
        assert torch.allclose(tta(x), plain(x), atol=1e-6)  # training sees single images


@pytest.mark.slow
def test_cli_purify_data(small_cifar: Path, tiny_diffusion: Path, tmp_path: Path) -> None:
    from freqpure.cli.main import main

    out = tmp_path / "cli.safetensors"
    common = ["--t-star", "20", "--steps", "1", "--limit", "8", "--amp", "none", "--threads", "1", "--no-progress"]
    args = ["train", "purify-data", str(out), "--diffusion", str(tiny_diffusion), "--data-dir", str(small_cifar)]
    assert main([*args, *common]) == 0
    images, info = load_purified(out)
    assert images.shape == (8, 32, 32, 3) and info["config"]["t_star"] == 20 and info["config"]["steps"] == 1
    assert main(["train", "purify-data", str(tmp_path / "x.safetensors"), "--diffusion", "no-such-model", *common]) == 2

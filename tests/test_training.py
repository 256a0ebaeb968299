"""Training loops: tiny real-data runs, exact resume after a stop, augmentation and CLI plumbing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from freqpure.cli.main import main
from freqpure.models.bundled import build_from_file
from freqpure.training import (
    ClassifierTrainConfig,
    DiffusionTrainConfig,
    augment_batch,
    load_checkpoint,
    sample_steps,
    train_classifier,
    train_diffusion,
)

TINY_UNET = {"base": 8, "mults": [1, 2], "num_res_blocks": 1, "attn_levels": [1], "dropout": 0.1}
TINY_RESNET = {"widths": [8, 16, 16], "stem": 8}


@pytest.fixture()
def diff_cfg(cifar_test_tar: Path) -> DiffusionTrainConfig:
    return DiffusionTrainConfig(
        name="tiny-ddpm",
        model=dict(TINY_UNET),
        steps=6,
        batch_size=8,
        warmup=2,
        log_every=1,
        ckpt_every=2,
        export_every=0,
        eval_images=8,
        amp="none",
        data_dir=str(cifar_test_tar.parent),
    )


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_diffusion_resume_matches_uninterrupted(diff_cfg: DiffusionTrainConfig, tmp_path: Path) -> None:
    full = train_diffusion(diff_cfg, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    stopped = train_diffusion(diff_cfg, part, stop_after=3, progress=False)
    assert stopped["step"] == 3 and (part / "checkpoint.pt").exists()
    # a row written after the checkpoint by the "killed" process must be dropped on resume
    with open(part / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 123.0}) + "\n")
    resumed = train_diffusion(diff_cfg, part, progress=False)
    assert resumed["step"] == 6
    assert _losses(part) == _losses(tmp_path / "full")  # bitwise-equal loss curve
    assert len(_losses(part)) == 6
    assert _same_state(full["ema"], resumed["ema"]) and _same_state(full["model"], resumed["model"])
    # the export is a loadable freqpure weights file with the shared metadata convention
    net, meta = build_from_file(part / "export" / "tiny-ddpm.safetensors", kind="diffusion")
    assert meta["freqpure_arch"] == "small-unet" and json.loads(meta["freqpure_config"]) == TINY_UNET
    assert net(torch.zeros(2, 3, 32, 32), torch.tensor([0.0, 999.0])).shape == (2, 3, 32, 32)


@pytest.mark.slow
def test_resume_refuses_other_config(diff_cfg: DiffusionTrainConfig, tmp_path: Path) -> None:
    train_diffusion(diff_cfg, tmp_path, stop_after=1, progress=False)
    with pytest.raises(ValueError, match="different config"):
        train_diffusion(replace(diff_cfg, lr=1e-3), tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train_diffusion(diff_cfg, tmp_path, resume=False, progress=False)
    with pytest.raises(FileNotFoundError):
        train_diffusion(diff_cfg, tmp_path / "new", resume=True, progress=False)


@pytest.mark.slow
def test_classifier_resume_matches_uninterrupted(cifar_test_tar: Path, tmp_path: Path) -> None:
    cfg = ClassifierTrainConfig(
        name="tiny-cls",
        model=dict(TINY_RESNET),
        epochs=2,
        batch_size=32,
        log_every=1,
        ckpt_every=3,
        eval_every_epoch=False,
        amp="none",
        data_dir=str(cifar_test_tar.parent),
    )
    full = train_classifier(cfg, tmp_path / "full", progress=False, max_train_images=128)
    train_classifier(cfg, tmp_path / "part", progress=False, max_train_images=128, stop_after=5)
    resumed = train_classifier(cfg, tmp_path / "part", progress=False, max_train_images=128)
    assert resumed["step"] == full["step"] == 8
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    assert _same_state(full["model"], resumed["model"])
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "final_test_acc" in r]
    assert len(final) == 1 and 0.0 <= final[0]["final_test_acc"] <= 1.0
    _, meta = build_from_file(tmp_path / "full" / "export" / "tiny-cls.safetensors", kind="classifier")
    assert "freqpure_test_accuracy_flip_tta" in meta


def test_augment_batch_deterministic() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(1), hflip=True, translate=2)
    b = augment_batch(x, torch.Generator().manual_seed(1), hflip=True, translate=2)
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(augment_batch(x, torch.Generator(), hflip=False, translate=0), x)
    flips = augment_batch(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(0), hflip=True)
    flipped = (flips == x.repeat(50, 1, 1, 1).flip(3)).flatten(1).all(1)
    assert 20 < flipped.sum() < 80  # about half the batch is flipped
    # a translated image is a shifted (reflect-padded) copy: its centre stays inside the original
    y = augment_batch(x[:1], torch.Generator().manual_seed(3), hflip=False, translate=1)
    patches = [x[0, :, 1 + dy : 7 + dy, 1 + dx : 7 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert any(torch.equal(y[0, :, 1:7, 1:7], p) for p in patches)


def test_sample_steps_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    t = sample_steps(20_000, g, 1000, 0.5, 400)
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() <= 999
    low = (t < 400).float().mean().item()
    assert abs(low - (0.5 + 0.5 * 0.4)) < 0.02
    assert (sample_steps(5000, g, 1000, 0.0, 400) >= 400).any()


@pytest.mark.slow
def test_cli_train_and_export(cifar_test_tar: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": TINY_UNET, "batch_size": 4, "eval_images": 4, "log_every": 1}))
    out = tmp_path / "run"
    args = [
        "train",
        "diffusion",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--steps",
        "2",
        "--threads",
        "1",
        "--amp",
        "none",
        "--data-dir",
        str(cifar_test_tar.parent),
        "--no-progress",
    ]
    assert main(args) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert json.loads((out / "config.json").read_text())["batch_size"] == 4
    assert main([*args[:-3], "--steps", "3", "--no-progress", "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    exported = tmp_path / "w.safetensors"
    assert main(["train", "export", str(out), str(exported)]) == 0
    _, meta = build_from_file(exported, kind="diffusion", arch="small-unet")
    assert meta["freqpure_train_step"] == "3"
    assert main(["train", "export", str(tmp_path / "missing"), str(exported)]) == 2
    assert main(["train", "summary", str(out), "--plot", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_key: 1\n")
    assert main(["train", "classifier", "--config", str(bad), "--out", str(tmp_path / "c")]) == 2


def test_cli_train_set_overrides_and_conflicts(mini_cifar_dir: Path, tmp_path: Path, capsys) -> None:
    """--config + --set like evaluate: typed, strict, and a key given twice (--set and its flag) is refused."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": TINY_UNET, "batch_size": 4, "eval_images": 4, "amp": "none"}))
    base = ["train", "diffusion", "--config", str(cfg), "--data-dir", str(mini_cifar_dir), "--no-progress",
            "--threads", "1"]
    out = tmp_path / "run"
    sets = ["--set", "steps=1", "--set", "t_max=200", "--set", "lr_schedule=cosine"]
    assert main([*base, "--out", str(out), *sets]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["steps"], saved["t_max"], saved["lr_schedule"], saved["batch_size"]) == (1, 200, "cosine", 4)
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "b"), "--set", "steps=2", "--steps", "3"]) == 2
    assert "steps given both by --set and by its own flag" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c"), "--set", "stpes=2"]) == 2
    assert "unknown config key 'stpes'" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "d"), "--set", "steps=many"]) == 2
    assert "steps must be an integer" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "e"), "--set", "t_max=2000"]) == 2
    assert "t_max must be in 1..1000" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()  # refused before any folder is made


def test_train_help_lists_every_subcommand_without_markup(capsys) -> None:
    for args in (["train", "--help"], *[["train", s, "--help"] for s in ("diffusion", "classifier", "purify-data")]):
        with pytest.raises(SystemExit):
            main(args)
        text = capsys.readouterr().out
        assert "``" not in text and ":mod:" not in text and ":func:" not in text
        if args == ["train", "--help"]:
            for sub in ("diffusion", "classifier", "purify-data", "export", "summary"):
                assert f"\n    {sub}" in text
        else:
            assert "--config FILE" in text and "--set KEY=VALUE" in text


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("train_*.yaml")),
                         ids=lambda p: p.stem)
def test_training_configs_load_strictly(path: Path) -> None:
    """Every training config in configs/ loads strictly (known keys, right types, valid values)."""
    from freqpure.config import load_yaml

    cls = DiffusionTrainConfig if path.stem.startswith("train_diffusion") else ClassifierTrainConfig
    assert path.stem.startswith(("train_diffusion", "train_classifier")), f"{path.name}: which task is it for?"
    cfg = load_yaml(cls, path)
    raw = yaml.safe_load(path.read_text())
    assert {k: getattr(cfg, k) for k in raw} == raw  # nothing coerced away or dropped

"""Model registry, safe checkpoint loading and ``freqpure convert``.

Published files are too large for tests, so the conversions run on the reduced fixtures (same
architecture families, ``--arch`` + ``--config``) and, for the name-based lookup, on a randomly
initialised full-size WRN-28-10 written in RobustBench's file layout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from freqpure.cli.main import main as cli_main
from freqpure.models import registry
from freqpure.models.adapters import EpsModel
from freqpure.models.checkpoint import (
    ArchitectureMismatchError,
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    is_safetensors,
    read_safetensors,
)
from freqpure.models.ncsnpp import ncsnpp_kwargs_from_config
from freqpure.models.registry import (
    UnknownModelError,
    list_models,
    load_classifier,
    load_diffusion,
    model_info,
)
from freqpure.models.wrn import WideResNet

torch.set_num_threads(1)

PUBLISHED_NAMES = [
    "diffpure-cifar10-ncsnpp",
    "guided-diffusion-imagenet256-uncond",
    "robustbench-cifar10-standard",
    "torchvision-resnet50",
]


class Evil:
    """Unpickling this runs ``os.system`` (a stand-in for a malicious checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def _fx(fixtures_dir: Path, folder: str) -> dict:
    return torch.load(fixtures_dir / folder / "fixture.pt", weights_only=True)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.fixture(autouse=True)
def _isolated_checkpoint_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "env-checkpoints"))


def _cli(*args: str) -> int:
    return cli_main(["convert", *map(str, args)])


# ------------------------------------------------------------------------------------------ names


def test_list_models_and_info() -> None:
    names = list_models()
    for name in PUBLISHED_NAMES:
        assert name in names
    assert set(list_models("diffusion")) >= set(PUBLISHED_NAMES[:2])
    assert "robustbench-cifar10-standard" not in list_models("diffusion")
    info = model_info("torchvision-resnet50")
    assert info["files"][:2] == ["resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"]
    assert info["sha256_prefix"]["resnet50-11ad3fa6.pth"] == "11ad3fa6"
    for name in PUBLISHED_NAMES:
        info = model_info(name)
        assert info["source"] and info["preprocessing"] and info["arch"] and info["files"]
        assert all(v is None or len(v) == 64 for v in info["sha256"].values())
    assert model_info("robustbench-cifar10-standard")["expected_clean_accuracy"] == pytest.approx(94.78)


def test_unknown_name_lists_close_matches_first() -> None:
    with pytest.raises(UnknownModelError) as err:
        load_diffusion("diffpure-cifar10-ncsn")
    msg = str(err.value)
    assert "Did you mean 'diffpure-cifar10-ncsnpp'" in msg
    known = msg.split("Known models: ")[1]
    assert known.startswith("diffpure-cifar10-ncsnpp")
    for name in PUBLISHED_NAMES:
        assert name in known


def test_wrong_kind_is_explained() -> None:
    with pytest.raises(ValueError, match="classifier model.*load_classifier"):
        load_diffusion("robustbench-cifar10-standard")
    with pytest.raises(ValueError, match="diffusion model.*load_diffusion"):
        load_classifier("guided-diffusion-imagenet256-uncond")


def test_missing_file_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_diffusion("diffpure-cifar10-ncsnpp", checkpoint_dir=tmp_path)
    msg = str(err.value)
    assert "checkpoint_8.pth" in msg and str(tmp_path) in msg and "checkpoint_dir argument" in msg
    assert "score_sde_pytorch" in msg and "diffpure-cifar10-ncsnpp.safetensors" in msg
    env_dir = tmp_path / "from-env"
    monkeypatch.setenv(registry.ENV_VAR, str(env_dir))
    with pytest.raises(FileNotFoundError) as err:
        load_diffusion("guided-diffusion-imagenet256-uncond")
    msg = str(err.value)
    assert "256x256_diffusion_uncond.pt" in msg and str(env_dir) in msg and "FREQPURE_CHECKPOINTS" in msg
    assert "openaipublic.blob.core.windows.net" in msg
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_classifier(tmp_path / "nope.pt")


# ------------------------------------------------------------------------------------------ convert + load


def _ncsnpp_score_sde_file(fixtures_dir: Path, path: Path) -> tuple[dict, dict]:
    fx = _fx(fixtures_dir, "ncsnpp_cifar10")
    names = [n for n in fx["state_dict"] if n != "sigmas"]
    ckpt = {
        "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999)}]},
        "model": {f"module.{n}": torch.zeros_like(fx["state_dict"][n]) for n in names},
        "ema": {"decay": 0.9999, "num_updates": 3, "shadow_params": [fx["state_dict"][n] for n in names]},
        "step": 3,
    }
    torch.save(ckpt, path)
    return fx, ncsnpp_kwargs_from_config(fx["config"])


@pytest.mark.slow
def test_convert_ncsnpp_score_sde_checkpoint_roundtrip(fixtures_dir: Path, tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "checkpoint_8.pth"
    fx, kwargs = _ncsnpp_score_sde_file(fixtures_dir, src)
    out = tmp_path / "ncsnpp-small.safetensors"
    assert _cli(src, "--to", out, "--arch", "ncsnpp", "--arch-config", json.dumps(kwargs)) == 0
    assert is_safetensors(out)
    _, meta = read_safetensors(out)
    assert meta["freqpure_kind"] == "diffusion" and meta["freqpure_arch"] == "ncsnpp"
    assert json.loads(meta["freqpure_config"])["nf"] == 16
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load used for a safetensors file"))
    model = load_diffusion(out, device="cpu")
    assert isinstance(model, EpsModel) and model.image_size == 32 and not model.learn_sigma
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.net.sigmas.dtype == torch.float64
    with torch.no_grad():
        _close(model(fx["inputs"]["x"], fx["inputs"]["time_cond"]), fx["output"])
    # Gradients reach the input through the frozen network.
    x = fx["inputs"]["x"].clone().requires_grad_(True)
    model(x, torch.tensor([17.0, 731.5])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Refuses to overwrite without --force.
    assert _cli(src, "--to", out, "--arch", "ncsnpp", "--arch-config", json.dumps(kwargs)) == 2


def test_convert_adm_bare_state_dict(fixtures_dir: Path, tmp_path: Path) -> None:
    fx = _fx(fixtures_dir, "adm_imagenet256_uncond")
    src = tmp_path / "adm-small.pt"
    torch.save(fx["state_dict"], src)
    out = tmp_path / "adm-small.safetensors"
    assert _cli(src, "--to", out, "--arch", "adm", "--arch-config", json.dumps(fx["extra"]["derived_unet_kwargs"])) == 0
    model = load_diffusion(str(out))
    assert model.learn_sigma and model.channels == 3 and model.image_size == 32
    with torch.no_grad():
        out_t = model(fx["inputs"]["x"], fx["inputs"]["timesteps"].float())
    assert out_t.shape == (2, 6, 32, 32)
    _close(out_t, fx["output"])


def test_convert_wrn_wrapped_prefixed_without_bn_counters(fixtures_dir: Path, tmp_path: Path) -> None:
    fx = _fx(fixtures_dir, "wrn28_10_robustbench")
    sd = {f"module.{k}": v for k, v in fx["state_dict"].items() if not k.endswith("num_batches_tracked")}
    src = tmp_path / "wrn-small.pt"
    torch.save({"state_dict": sd, "epoch": 3}, src)
    out = tmp_path / "wrn-small.safetensors"
    assert _cli(src, "--to", out, "--arch", "wrn", "--arch-config", json.dumps(fx["config"])) == 0
    model = load_classifier(out)
    with torch.no_grad():
        _close(model(fx["inputs"]["x"]), fx["output"])


@pytest.mark.slow
def test_published_name_lookup_and_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full-size WRN-28-10 in RobustBench's layout → by name → convert → by name without pickle."""
    torch.manual_seed(0)
    ref = WideResNet(depth=28, widen_factor=10).eval()
    ckpt_dir = tmp_path / "ckpts"
    (ckpt_dir / "cifar10" / "Linf").mkdir(parents=True)
    src = ckpt_dir / "cifar10" / "Linf" / "Standard.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, src)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(x)
    model = load_classifier("robustbench-cifar10-standard", checkpoint_dir=ckpt_dir)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    # Default output name is the registry name, next to the input; move it to the checkpoint dir.
    assert _cli(src) == 0
    converted = src.parent / "robustbench-cifar10-standard.safetensors"
    converted.rename(ckpt_dir / converted.name)
    src.unlink()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load used for a safetensors file"))
    model = load_classifier("robustbench-cifar10-standard", checkpoint_dir=ckpt_dir)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


# ------------------------------------------------------------------------------------------ wrong files


def test_wrong_architecture_reports_keys_and_shapes(fixtures_dir: Path, tmp_path: Path) -> None:
    fx = _fx(fixtures_dir, "wrn28_10_robustbench")  # a WRN-16-2 where WRN-28-10 is expected
    torch.save(fx["state_dict"], tmp_path / "Standard.pt")
    with pytest.raises(ArchitectureMismatchError) as err:
        load_classifier("robustbench-cifar10-standard", checkpoint_dir=tmp_path)
    msg = str(err.value)
    assert "missing" in msg and "shape mismatch" in msg
    assert "block1.layer.2.bn1.weight" in msg  # first missing key (depth 28 has 4 blocks per group)
    assert "block1.layer.0.conv1.weight: file [32, 16, 3, 3] vs model [160, 16, 3, 3]" in msg
    assert "Traceback" not in msg
    # The CLI reports the same thing as one error, exit status 2.
    assert _cli(tmp_path / "Standard.pt", "--arch", "robustbench-cifar10-standard") == 2


def test_ema_length_mismatch_is_reported(fixtures_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "checkpoint_8.pth"
    _ncsnpp_score_sde_file(fixtures_dir, src)  # reduced model where the full one is expected
    with pytest.raises(ArchitectureMismatchError, match="EMA has 368 shadow params .* 956 parameters"):
        load_diffusion("diffpure-cifar10-ncsnpp", checkpoint_dir=tmp_path)


def test_unknown_layout_is_reported(fixtures_dir: Path, tmp_path: Path) -> None:
    from freqpure.models.checkpoint import write_safetensors

    fx = _fx(fixtures_dir, "wrn28_10_robustbench")
    path = write_safetensors(tmp_path / "mystery.safetensors", fx["state_dict"], {})
    with pytest.raises(ArchitectureMismatchError, match="cannot tell which architecture") as err:
        load_classifier(path)
    assert "robustbench-cifar10-standard" in str(err.value) and "--arch" in str(err.value)


def test_checksum_prefix_is_verified(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet50-11ad3fa6.pth")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_classifier("torchvision-resnet50", checkpoint_dir=tmp_path)
    assert _cli(tmp_path / "resnet50-11ad3fa6.pth") == 2


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "Standard.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_classifier(evil)
    assert "posix.system" in str(err.value) or "system" in str(err.value)
    assert "--trust-pickle" in str(err.value) and "freqpure convert" in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        load_classifier("robustbench-cifar10-standard", checkpoint_dir=tmp_path)
    assert _cli(evil, "--to", tmp_path / "out.safetensors") == 2
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_trust_pickle_converts_code_needing_pickles(fixtures_dir: Path, tmp_path: Path) -> None:
    fx = _fx(fixtures_dir, "wrn28_10_robustbench")
    src = tmp_path / "with-args.pt"
    torch.save({"state_dict": fx["state_dict"], "args": argparse.Namespace(lr=0.1)}, src)
    out = tmp_path / "with-args.safetensors"
    args = ["--to", out, "--arch", "wrn", "--arch-config", json.dumps(fx["config"])]
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        load_classifier(src)
    assert _cli(src, *args) == 2 and not out.exists()
    assert _cli(src, *args, "--trust-pickle") == 0
    with torch.no_grad():
        _close(load_classifier(out)(fx["inputs"]["x"]), fx["output"])


def test_truncated_and_corrupt_files(fixtures_dir: Path, tmp_path: Path) -> None:
    fx = _fx(fixtures_dir, "wrn28_10_robustbench")
    good = tmp_path / "good.pt"
    torch.save(fx["state_dict"], good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        load_classifier(tmp_path / "trunc.pt")
    from freqpure.models.checkpoint import write_safetensors

    st = write_safetensors(tmp_path / "good.safetensors", fx["state_dict"], {})
    st_bytes = st.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(st_bytes[: len(st_bytes) // 2])
    with pytest.raises(CorruptCheckpointError, match="safetensors"):
        load_classifier(tmp_path / "trunc.safetensors")
    (tmp_path / "noise.pth").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="cannot be read safely|corrupt"):
        load_classifier(tmp_path / "noise.pth")
    assert _cli(tmp_path / "trunc.pt", "--arch", "wrn") == 2


# ------------------------------------------------------------------------------------------ bundled / diffusers


class _TinyEps(nn.Module):
    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * (1 + t.view(-1, 1, 1, 1) / 1000)


def _fake_bundled(calls: list) -> types.ModuleType:
    mod = types.ModuleType("freqpure.models.bundled")
    mod.ARCHITECTURES = {"tiny-eps": _TinyEps}
    mod.BUNDLED = {
        "tiny-diffusion": {"kind": "diffusion", "file": "tiny.safetensors", "arch": "tiny-eps",
                           "description": "test"},
        "tiny-classifier": {"kind": "classifier", "file": "c.safetensors", "arch": "x", "description": "test"},
    }

    def load_bundled_diffusion(name, device=None):
        calls.append((name, device))
        return EpsModel(_TinyEps(), image_size=32, name=name)

    def load_bundled_classifier(name, device=None):
        calls.append((name, device))
        return nn.Linear(2, 2)

    mod.load_bundled_diffusion = load_bundled_diffusion
    mod.load_bundled_classifier = load_bundled_classifier
    return mod


def test_bundled_names_are_delegated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "freqpure.models.bundled", _fake_bundled(calls))
    assert list_models()[:2] == ["tiny-diffusion", "tiny-classifier"]
    model = load_diffusion("tiny-diffusion", device="cpu")
    assert isinstance(model, EpsModel) and calls == [("tiny-diffusion", "cpu")]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert isinstance(load_classifier("tiny-classifier"), nn.Linear)
    with pytest.raises(ValueError, match="diffusion model"):
        load_classifier("tiny-diffusion")
    with pytest.raises(UnknownModelError, match="tiny-diffusion"):
        load_diffusion("tiny-difusion")
    # A safetensors file naming a bundled architecture in its metadata is built through it.
    from freqpure.models.checkpoint import write_safetensors

    net = _TinyEps()
    meta = {"freqpure_kind": "diffusion", "freqpure_arch": "tiny-eps", "freqpure_config": json.dumps({}),
            "freqpure_eps": json.dumps({"image_size": 32, "channels": 3})}
    path = write_safetensors(tmp_path / "tiny.safetensors", {k: v.half() for k, v in net.state_dict().items()}, meta)
    loaded = load_diffusion(path)
    assert isinstance(loaded.net, _TinyEps) and loaded.image_size == 32
    assert loaded.net.conv.weight.dtype == torch.float32


def test_no_bundled_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "freqpure.models.bundled", None)  # import fails: module missing
    assert list_models() == [n for n in registry.PUBLISHED]
    with pytest.raises(UnknownModelError):
        load_diffusion("cifar10-ddpm-small")


def test_diffusers_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 32}))
    if importlib.util.find_spec("diffusers") is None:
        with pytest.raises(RuntimeError, match="pip install diffusers"):
            load_diffusion(tmp_path)
    else:
        with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
            load_diffusion(tmp_path)

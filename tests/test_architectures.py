"""Our re-implementations of the published architectures against the shared fixtures.

For each family: (1) the reduced fixture's weights load strictly and reproduce the reference output
within ``1e-5 · max|ref|`` (float32, CPU); (2) the full published configuration has exactly the
manifest's parameter names/shapes/order, buffers, state_dict keys and parameter count.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from freqpure.models._archs import score_sde_state_dict
from freqpure.models._specs import PUBLISHED
from freqpure.models._wrappers import NormalizedClassifier
from freqpure.models.adapters import EpsModel
from freqpure.models.adm import ADMUNet, adm_kwargs_from_config, build_adm
from freqpure.models.checkpoint import load_weights
from freqpure.models.dm_wrn import DMWideResNet
from freqpure.models.ncsnpp import NCSNpp, build_ncsnpp, ncsnpp_kwargs_from_config
from freqpure.models.resnet import ResNet, imagenet_classifier, resnet50
from freqpure.models.wrn import WideResNet, build_wrn

torch.set_num_threads(1)


def _fixture(fixtures_dir: Path, folder: str) -> tuple[dict, dict]:
    fx = torch.load(fixtures_dir / folder / "fixture.pt", weights_only=True)
    man = json.loads((fixtures_dir / folder / "manifest.json").read_text())
    return fx, man


def _manifest(fixtures_dir: Path, folder: str) -> dict:
    return json.loads((fixtures_dir / folder / "manifest.json").read_text())


def _structure(model: nn.Module) -> dict:
    return {
        "named_parameters": [[n, list(p.shape)] for n, p in model.named_parameters()],
        "buffers": [[n, list(b.shape)] for n, b in model.named_buffers()],
        "state_dict_keys": list(model.state_dict().keys()),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def _assert_structure(model: nn.Module, expected: dict) -> None:
    got = _structure(model)
    for key in ("named_parameters", "buffers", "state_dict_keys", "total_params"):
        assert got[key] == expected[key], f"{key} differs from the manifest"


def _assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


# ------------------------------------------------------------------------------------------------ NCSN++


def test_ncsnpp_fixture_forward(fixtures_dir: Path) -> None:
    fx, man = _fixture(fixtures_dir, "ncsnpp_cifar10")
    model = build_ncsnpp(fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval()
    assert _structure(model)["named_parameters"] == man["fixture"]["named_parameters"]
    assert list(model.state_dict()) == man["fixture"]["state_dict_keys"]
    assert model.sigmas.dtype == torch.float64
    torch.testing.assert_close(model.sigmas, fx["state_dict"]["sigmas"], rtol=1e-12, atol=0)
    with torch.no_grad():
        out = model(fx["inputs"]["x"], fx["inputs"]["time_cond"])
    _assert_close(out, fx["output"])


def test_ncsnpp_eps_model_and_diffpure_score(fixtures_dir: Path) -> None:
    """Step index n = t·999 passes through EpsModel unchanged; score = −ε / std_VP(t)."""
    fx, _ = _fixture(fixtures_dir, "ncsnpp_cifar10")
    net = build_ncsnpp(fx["config"])
    net.load_state_dict(fx["state_dict"], strict=True)
    eps_model = EpsModel(net, image_size=32, time_scale=1.0).eval()
    t = fx["extra"]["t"]
    with torch.no_grad():
        eps = eps_model(fx["inputs"]["x"], t * 999)
    _assert_close(eps, fx["extra"]["model_output_at_t_times_999"])
    beta_min, beta_max = fx["extra"]["vpsde"]["beta_min"], fx["extra"]["vpsde"]["beta_max"]
    log_mean = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean))
    _assert_close(-eps / std[:, None, None, None], fx["extra"]["score"])


def test_ncsnpp_ema_shadow_params_by_position(fixtures_dir: Path) -> None:
    """A score_sde-style checkpoint maps ``ema.shadow_params[i]`` to the i-th parameter."""
    fx, _ = _fixture(fixtures_dir, "ncsnpp_cifar10")
    kwargs = ncsnpp_kwargs_from_config(fx["config"])
    names = [n for n in fx["state_dict"] if n != "sigmas"]
    ckpt = {
        "optimizer": {"state": {}, "param_groups": []},
        "model": {f"module.{n}": torch.zeros_like(fx["state_dict"][n]) for n in names},  # raw weights: ignored
        "ema": {"decay": 0.9999, "num_updates": 10, "shadow_params": [fx["state_dict"][n] for n in names]},
        "step": 10,
    }
    with torch.device("meta"):
        model = NCSNpp(**kwargs)
    sd = score_sde_state_dict(ckpt, model, kwargs)
    load_weights(model, sd, what="reduced ncsnpp").eval()
    with torch.no_grad():
        out = model(fx["inputs"]["x"], fx["inputs"]["time_cond"])
    _assert_close(out, fx["output"])


def test_ncsnpp_full_structure(fixtures_dir: Path) -> None:
    man = _manifest(fixtures_dir, "ncsnpp_cifar10")
    with torch.device("meta"):
        full = build_ncsnpp(man["config"])
    _assert_structure(full, man)
    assert len(full.all_modules) == man["num_modules_in_all_modules"]
    assert sum(p.requires_grad for p in full.parameters()) == man["num_ema_shadow_params"]
    assert full.sigmas.dtype == torch.float64
    kwargs = ncsnpp_kwargs_from_config(man["config"])
    registry_cfg = PUBLISHED["diffpure-cifar10-ncsnpp"].config
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()} == registry_cfg


def test_ncsnpp_rejects_unsupported_options(fixtures_dir: Path) -> None:
    man = _manifest(fixtures_dir, "ncsnpp_cifar10")
    cfg = json.loads(json.dumps(man["config"]))
    cfg["model"]["fir"] = True
    with pytest.raises(ValueError, match="fir"):
        ncsnpp_kwargs_from_config(cfg)


# ------------------------------------------------------------------------------------------------ ADM


def test_adm_fixture_forward(fixtures_dir: Path) -> None:
    fx, man = _fixture(fixtures_dir, "adm_imagenet256_uncond")
    assert adm_kwargs_from_config(fx["config"]) == fx["extra"]["derived_unet_kwargs"]
    model = build_adm(fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval()
    assert _structure(model)["named_parameters"] == man["fixture"]["named_parameters"]
    attn = [m for m in model.modules() if type(m).__name__ == "AttentionBlock"]
    assert len(attn) == man["fixture"]["num_attention_blocks"]
    with torch.no_grad():
        out = model(fx["inputs"]["x"], fx["inputs"]["timesteps"])
        out_float_t = model(fx["inputs"]["x"], fx["inputs"]["timesteps"].float())
    _assert_close(out, fx["output"])
    assert torch.equal(out, out_float_t)
    # As an ε-model: float step indices in, all 6 channels (ε, variance values) out.
    eps_model = EpsModel(model, image_size=32, learn_sigma=True).eval()
    with torch.no_grad():
        _assert_close(eps_model(fx["inputs"]["x"], fx["inputs"]["timesteps"].float()), fx["output"])


def test_adm_gradient_checkpointing_keeps_values(fixtures_dir: Path) -> None:
    fx, _ = _fixture(fixtures_dir, "adm_imagenet256_uncond")
    kwargs = dict(fx["extra"]["derived_unet_kwargs"], use_checkpoint=True)
    model = ADMUNet(**kwargs)
    model.load_state_dict(fx["state_dict"], strict=True)
    x = fx["inputs"]["x"].clone().requires_grad_(True)
    out = model.eval()(x, fx["inputs"]["timesteps"])
    _assert_close(out.detach(), fx["output"])
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_adm_full_structure(fixtures_dir: Path) -> None:
    man = _manifest(fixtures_dir, "adm_imagenet256_uncond")
    assert adm_kwargs_from_config(man["config"]) == man["derived_unet_kwargs"]
    assert dict(PUBLISHED["guided-diffusion-imagenet256-uncond"].config) == man["derived_unet_kwargs"]
    with torch.device("meta"):
        full = build_adm(man["config"])
    _assert_structure(full, man)
    assert len(man["named_parameters"]) == man["num_parameter_tensors"]


# ------------------------------------------------------------------------------------------------ WRN


def test_wrn_fixture_forward(fixtures_dir: Path) -> None:
    fx, man = _fixture(fixtures_dir, "wrn28_10_robustbench")
    model = build_wrn(fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval()
    assert _structure(model)["named_parameters"] == man["fixture"]["named_parameters"]
    assert _structure(model)["buffers"] == man["fixture"]["buffers"]
    with torch.no_grad():
        out = model(fx["inputs"]["x"])
    _assert_close(out, fx["output"])
    assert out.argmax(1).tolist() == man["fixture"]["output_argmax"]


def test_wrn_full_structure(fixtures_dir: Path) -> None:
    man = _manifest(fixtures_dir, "wrn28_10_robustbench")
    full = WideResNet(**man["config"])
    _assert_structure(full, man)
    assert dict(PUBLISHED["robustbench-cifar10-standard"].config) == man["config"]
    dtypes = man["buffer_dtypes_by_name_suffix"]
    for name, buf in full.named_buffers():
        assert str(buf.dtype).removeprefix("torch.") == dtypes[name.rsplit(".", 1)[1]]


# ------------------------------------------------------------------------------------------------ ResNet-50


def test_resnet50_full_structure(fixtures_dir: Path) -> None:
    man = _manifest(fixtures_dir, "resnet50_torchvision")
    ours = resnet50(use_torchvision=False)
    assert isinstance(ours, ResNet)
    _assert_structure(ours, man)
    if importlib.util.find_spec("torchvision") is not None:  # torchvision's own model must agree too
        _assert_structure(resnet50(use_torchvision=True), man)
    # Wrapped for [0, 1] inputs: the wrapper adds no state_dict entries (mean/std are non-persistent).
    wrapped = imagenet_classifier(ours)
    assert list(wrapped.state_dict()) == [f"net.{k}" for k in man["state_dict_keys"]]
    assert wrapped.input_size == 224 and wrapped.mean.shape == (1, 3, 1, 1)


def test_resnet_bottleneck_v15_stride_on_3x3() -> None:
    block = resnet50(use_torchvision=False).layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_normalized_classifier_maps_unit_range() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    wrapped = NormalizedClassifier(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), input_size=24).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    resized = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net((resized - mean) / std))


# ------------------------------------------------------------------------------------------------ DM-WRN


def test_dm_wrn_structure_unverified() -> None:
    """No fixture exists: check only internal consistency (names, padding, normalisation inside)."""
    model = DMWideResNet(depth=16, width=2).eval()
    keys = list(model.state_dict())
    assert keys[0] == "init_conv.weight" and keys[-2:] == ["logits.weight", "logits.bias"]
    assert "layer.0.block.0.shortcut.weight" in keys and "mean" not in keys
    assert "layer.0.block.1.shortcut.weight" not in keys
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with torch.device("meta"):
        full = DMWideResNet()
    n = sum(p.numel() for p in full.parameters())
    assert math.isclose(n, 266.8e6, rel_tol=1e-3)  # "WRN-70-16: 267M parameters"

"""A diffusion model's trained step range (t_max): stated by the registry, refused beyond by purifiers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import freqpure
from freqpure.config import PurifierConfig, build_purifier
from freqpure.errors import UsageError
from freqpure.models.bundled import weights_path
from freqpure.models.checkpoint import read_safetensors, write_safetensors
from freqpure.models.registry import model_info
from freqpure.purifiers import DiffPure, FreqPure


@pytest.fixture(scope="module")
def range200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled small ε-model's weights in a file whose metadata says it was trained on steps 0..199."""
    tensors, meta = read_safetensors(weights_path("cifar10-ddpm-small"))
    path = tmp_path_factory.mktemp("w") / "ddpm-range200.safetensors"
    return write_safetensors(path, tensors, {**meta, "freqpure_t_max": "200"})


def test_registry_states_the_range() -> None:
    assert model_info("cifar10-ddpm-small")["t_max"] == 1000
    assert model_info("cifar10-ddpm-pure")["t_max"] == 200
    assert model_info("diffpure-cifar10-ncsnpp")["t_max"] == 1000
    assert model_info("guided-diffusion-imagenet256-uncond")["t_max"] == 1000
    assert "t_max" not in model_info("cifar10-resnet-small")
    assert "0..199" in model_info("cifar10-ddpm-pure")["description"]


def test_load_diffusion_reads_the_range(range200: Path) -> None:
    full = freqpure.load_diffusion("cifar10-ddpm-small")  # no freqpure_t_max in its file: the whole schedule
    assert full.t_max == 1000 and "steps 0..999" in repr(full)
    pure = freqpure.load_diffusion(range200)
    assert pure.t_max == 200 and "steps 0..199 (t_max=200)" in repr(pure)


def test_bundled_pure_model_loads_with_its_range() -> None:
    model = freqpure.load_diffusion("cifar10-ddpm-pure")
    assert model.t_max == 200
    x = torch.rand(2, 3, 32, 32)
    assert DiffPure(model, t_star=200, steps=2)(x).shape == x.shape


def test_purifiers_refuse_noise_beyond_the_range(range200: Path) -> None:
    model = freqpure.load_diffusion(range200)
    x = torch.rand(2, 3, 32, 32)
    # inside the range: t* = t_max is fine (the chain starts at step index 199), every shipped plan fits
    assert DiffPure(model, t_star=200, steps=1)(x).shape == x.shape
    FreqPure(model, rounds="20:5*5,50:5*5")
    FreqPure(model, rounds="100:5", reference="denoised", reference_t=199)
    FreqPure(model, rounds="100:5", reference="input", reference_t=500)  # the reference is not used
    with pytest.raises(UsageError, match=r"t\* = 201.*'ddpm-range200'.*0\.\.199.*t_max = 200"):
        DiffPure(model, t_star=201, steps=1)
    with pytest.raises(UsageError, match=r"round 2 noises to t\* = 250"):
        FreqPure(model, rounds="100:5,250:5")
    with pytest.raises(UsageError, match=r"round 1 noises to t\* = 1000"):
        DiffPure(model, t_star=1000, steps=10, sampler="sde")
    with pytest.raises(UsageError, match=r"reference_t = 200.*0\.\.199"):
        FreqPure(model, rounds="100:5", reference="denoised", reference_t=200)
    with pytest.raises(UsageError, match=r"t\* = 300"):
        DiffPure(model, t_star=100, steps=1).with_rounds("300:1")  # e.g. an attack's surrogate plan
    cfg = PurifierConfig(method="diffpure", diffusion=str(range200), rounds="150:150")
    assert build_purifier(cfg).rounds[0].t_star == 150
    with pytest.raises(UsageError, match=r"t\* = 400"):
        build_purifier(PurifierConfig(method="freqpure", diffusion=str(range200), rounds="400:4"))
    # a full-range model takes any plan
    DiffPure(freqpure.load_diffusion("cifar10-ddpm-small"), t_star=1000, steps=1)

"""Stand-ins for published checkpoints (dry runs of *-published configs) and the AutoAttack smoke-run knob."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import freqpure
from freqpure.errors import OutputExistsError, UsageError
from freqpure.evaluation.config import AttackConfig
from freqpure.models.bundled import read_metadata
from freqpure.models.standins import STANDIN_KEY, write_standin


def test_standin_loads_through_the_registry_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_standin("robustbench-cifar10-standard", tmp_path)
    meta = read_metadata(path)
    assert "random weights" in meta[STANDIN_KEY] and json.loads(meta["freqpure_config"])["depth"] == 10
    monkeypatch.setenv("FREQPURE_CHECKPOINTS", str(tmp_path))
    with pytest.warns(UserWarning, match="stand-in, not the real model"):
        clf = freqpure.load_classifier("robustbench-cifar10-standard")
    assert clf(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    write_standin("diffpure-cifar10-ncsnpp", tmp_path, seed=1)
    with pytest.warns(UserWarning, match="stand-in"):
        eps = freqpure.load_diffusion("diffpure-cifar10-ncsnpp")
    assert (eps.image_size, eps.t_max) == (32, 1000)
    assert eps(torch.randn(2, 3, 32, 32), torch.tensor([5.0, 500.0])).shape == (2, 3, 32, 32)
    # the same seed gives the same weights; a stand-in never replaces an existing file
    with pytest.raises(OutputExistsError, match="never replaces"):
        write_standin("robustbench-cifar10-standard", tmp_path)
    again = write_standin("robustbench-cifar10-standard", tmp_path / "b")
    a, b = freqpure.models.checkpoint.read_safetensors(path)[0], freqpure.models.checkpoint.read_safetensors(again)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UsageError, match="published models only"):
        write_standin("cifar10-ddpm-small", tmp_path)


def test_autoattack_iters_is_for_autoattack_only_and_labelled() -> None:
    smoke = AttackConfig(name="autoattack", autoattack_iters=1)
    assert smoke.display().endswith("-iters1") and not AttackConfig(name="autoattack").display().endswith("iters1")
    with pytest.raises(UsageError, match="autoattack_iters applies to autoattack only"):
        AttackConfig(name="pgd", autoattack_iters=1)

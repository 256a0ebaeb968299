"""``noise_addressing: image-v1`` (#22, #25 item 4): an evaluation's numbers do not depend on its batch size, so
``batch_size: auto`` may pick any size; under ``batch-v1`` (every recorded run) ``auto`` is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import freqpure
from freqpure.evaluation import evaluate, load_eval_config
from helpers import model_name, one_thread

pytestmark = [pytest.mark.data, pytest.mark.slow]

# two attacks: PGD L-inf with EOT, and BPDA in L2 with two restarts (the L2 random start draws normals and uniforms)
ATTACKS = {"attacks": [{"name": "pgd", "steps": 2, "eot": 2},
                       {"name": "bpda", "norm": "l2", "eps": 0.5, "steps": 2, "restarts": 2}]}
IMAGE = [
    "name=inv", "data.n=4", "purifier.rounds=30:2", "defence.ensemble=2",
    "sanity.undefended_steps=3", "sanity.sweep_samples=3", "sanity.eps_sweep=[0.5]", "noise_scheme=counter-v1",
    "noise_addressing=image-v1",
    f"classifier.name={model_name('cifar10-resnet-small')}", f"purifier.diffusion={model_name('cifar10-ddpm-small')}",
]
# bookkeeping that names the batch or the config (batch_size differs), not a number of the image
BOOKKEEPING = {"batch", "seconds", "config_sha256", "numbers_sha256"}


@pytest.fixture(scope="module")
def models():
    clf = freqpure.load_classifier(model_name("cifar10-resnet-small")).eval().requires_grad_(False)
    eps = freqpure.load_diffusion(model_name("cifar10-ddpm-small")).eval().requires_grad_(False)
    return clf, eps


def _records(out: Path) -> dict[int, dict]:
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return {r["index"]: {k: v for k, v in r.items() if k not in BOOKKEEPING} for r in recs}


def _close(a, b, where: str) -> None:
    """Equal records, floats within float rounding (batched convolutions may round differently)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k != "seconds":
                _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), where
    else:
        assert a == b, where


def test_image_addressed_records_do_not_depend_on_the_batch_size(tmp_path: Path, models) -> None:
    """Batch size 2 and 4 (and auto, 4 on a CPU here): the same predictions, outcomes, losses, norms and sanity
    checks for every image, the same eps sweep; the auto choice is recorded in results.json."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(ATTACKS))
    runs = {}
    with one_thread():
        for size in ("2", "4", "auto"):
            runs[size] = evaluate(load_eval_config(base, [*IMAGE, f"batch_size={size}"]), tmp_path / size,
                                  models=models, progress=False)
    two, four, auto = (_records(tmp_path / s) for s in ("2", "4", "auto"))
    assert sorted(two) == sorted(four) == sorted(auto) and len(two) == 4
    assert {r["batch"] for r in map(json.loads, (tmp_path / "2" / "samples.jsonl").read_text().splitlines())} \
        == {0, 1}  # really two batches
    for index in two:
        _close(two[index], four[index], f"image {index} (2 vs 4)")
        _close(two[index], auto[index], f"image {index} (2 vs auto)")
    sweeps = [runs[s].sanity["eps_sweep"] for s in runs]
    assert sweeps[0]["accuracy"] == sweeps[1]["accuracy"] == sweeps[2]["accuracy"]
    assert runs["auto"].protocol["batch_size"].startswith("4: auto on cpu: the default 16")
    assert runs["2"].protocol["noise_addressing"] == "image-v1" and "batch_size" not in runs["2"].protocol
    saved = (tmp_path / "auto" / "config.yaml").read_text()
    assert "batch_size: auto" in saved and "noise_addressing: image-v1" in saved


def test_a_batch_addressed_run_keeps_its_config_and_protocol(tmp_path: Path, models) -> None:
    """batch-v1 (the default): no noise_addressing key in config.yaml or the protocol (recorded runs' config
    fingerprints and results files stay as they were)."""
    cfg = load_eval_config(None, [a for a in IMAGE if not a.startswith(("noise_", "sanity.eps"))] +
                           ["batch_size=4", "data.n=2", "sanity.eps_sweep=[]", "attacks.0.steps=2"])
    with one_thread():
        res = evaluate(cfg, tmp_path / "run", models=models, progress=False)
    assert "noise_addressing" not in (tmp_path / "run" / "config.yaml").read_text()
    assert "noise_addressing" not in res.protocol and "batch_size" not in res.protocol
    assert "(seed, batch index, purpose)" in res.protocol["noise"]


def test_the_cuda_probe_runs_and_its_choice_divides_free_memory(monkeypatch, models) -> None:
    """What auto does on CUDA, checked on the CPU: the probe (every attack's first gradient and the defended
    prediction on image-addressed streams) runs, and the choice divides free + reclaimable memory by the peak."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from freqpure.evaluation import batching
    from freqpure.evaluation.components import build_defence, load_eval_data
    from freqpure.evaluation.runner import BatchRunner

    cfg = load_eval_config(None, [*IMAGE, "batch_size=auto", "attacks.0.steps=2", "attacks.0.eot=2"])
    runner = BatchRunner(cfg, build_defence(cfg, *models))
    data = load_eval_data(cfg.data)
    with one_thread():
        batching._probe(runner, data.images([0, 1]), data.labels[[0, 1]], [int(i) for i in data.indices[:2]])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr("freqpure.checkpointing.available_memory", lambda device: 10 * 2**30)
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    choice = batching._cuda_choice(gpu, SimpleNamespace(indices=np.arange(5000)), 5000,
                                   measure=lambda r, d, p: (40 * 2**20, 80 * 2**20))
    assert choice.size == 200  # 80 % of 10 GiB / 40 MiB = 204.8 -> a multiple of 8
    assert "40 MiB per image" in choice.reason and "10.0 GiB free + reclaimable" in choice.reason
    small = batching._cuda_choice(gpu, SimpleNamespace(indices=np.arange(3)), 3, measure=lambda r, d, p: (1.0, 2))
    assert small.size == 3  # never more than the subset

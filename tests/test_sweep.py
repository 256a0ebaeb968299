"""The eps sweep as a stage of its own: per-image records (``sweep-{m}.jsonl``), the same numbers as the sweep
that ran inside ``finalize`` (its loop is kept below as the reference), and a resume after a crash mid-sweep."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import freqpure
from freqpure.evaluation import evaluate, load_eval_config
from freqpure.evaluation.components import build_defence, load_eval_data
from freqpure.evaluation.runner import BatchRunner
from freqpure.noise import Purpose
from helpers import model_name, one_thread

pytestmark = pytest.mark.data  # the CIFAR-10 test data

SETS = ["name=sweeptest", "data.n=4", "batch_size=2", "purifier.rounds=30:2", "defence.ensemble=2",
        "attacks.0.steps=2", "attacks.0.eot=2", "sanity.undefended_steps=2", "sanity.sweep_samples=3",
        "sanity.eps_sweep=[2.0, 0.5]",  # unsorted on purpose: multiplier m is the m-th in sorted order
        f"classifier.name={model_name('cifar10-resnet-small')}",
        f"purifier.diffusion={model_name('cifar10-ddpm-small')}"]


@pytest.fixture(scope="module")
def cfg():
    return load_eval_config(None, SETS)


@pytest.fixture(scope="module")
def models(cfg):
    with one_thread():
        clf = freqpure.load_classifier(cfg.classifier.name).eval().requires_grad_(False)
        eps = freqpure.load_diffusion(cfg.purifier.diffusion).eval().requires_grad_(False)
    return clf, eps


@pytest.fixture(scope="module")
def run(tmp_path_factory, cfg, models) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "run"
    with one_thread():
        evaluate(cfg, out, models=models, progress=False)
    return out


def _previous_sweep(cfg, models) -> tuple[list[float], list[list[int]]]:
    """The sweep as ``runner.eps_sweep`` computed it inside ``finalize`` before it became a stage (its loop,
    unchanged): the eps per multiplier and the defence's predictions per multiplier, in image order."""
    data = load_eval_data(cfg.data)
    runner = BatchRunner(cfg, build_defence(cfg, *models), torch.device("cpu"), batch_size=cfg.batch_size)
    attack, k = cfg.attacks[0], min(cfg.sanity.sweep_samples, len(data.indices))
    eps_list, preds = [], []
    for m_i, mult in enumerate(sorted(cfg.sanity.eps_sweep)):
        scaled = replace(attack, eps=min(attack.eps * mult, 0.5 if attack.norm == "linf" else 50.0), label="sweep",
                         step_size=None if attack.step_size is None else attack.step_size * mult)
        found: list[int] = []
        for b, start in enumerate(range(0, k, runner.batch_size)):
            pos = list(range(start, min(start + runner.batch_size, k)))
            images = [int(data.indices[p]) for p in pos]
            x, y = data.images(pos), data.labels[pos]
            out = runner.attack(0, scaled, x, y, b, sweep=m_i, images=images)
            found += runner.defence.predict(out.x_adv, runner.stream(b, images, Purpose.JUDGE, 0, sweep=m_i)).tolist()
        eps_list.append(scaled.eps)
        preds.append(found)
    return eps_list, preds


def _lines(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def test_the_sweep_stage_computes_what_the_finalize_sweep_computed(run: Path, cfg, models) -> None:
    with one_thread():
        eps_list, preds = _previous_sweep(cfg, models)
    sweep = json.loads((run / "results.json").read_text())["sanity"]["eps_sweep"]
    assert sweep["eps"][1:] == eps_list and sweep["samples"] == 3
    for m, expected in enumerate(preds):
        records = sorted(_lines(run / f"sweep-{m}.jsonl"), key=lambda r: r["position"])
        assert [r["pred"] for r in records] == expected
        assert all(r["correct"] == (r["pred"] == r["label"]) and r["eps"] == eps_list[m] for r in records)
        assert sweep["accuracy"][m + 1] == sum(r["correct"] for r in records) / 3
    assert {r["multiplier"] for r in _lines(run / "sweep-0.jsonl")} == {0.5}  # sorted order


def test_the_sweep_resumes_after_a_crash(run: Path, cfg, models, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {m: _lines(run / f"sweep-{m}.jsonl") for m in (0, 1)}
    results = json.loads((run / "results.json").read_text())["sanity"]["eps_sweep"]
    first = (copy / "sweep-0.jsonl").read_text().splitlines(keepends=True)[0]
    (copy / "sweep-0.jsonl").write_text(first + '{"index": 12')  # one record kept, a torn write after it
    (copy / "sweep-1.jsonl").unlink()
    (copy / "results.json").unlink()
    with one_thread():
        res = evaluate(cfg, copy, models=models, resume=True, progress=False)
    assert res.sanity["eps_sweep"] == results
    for m in (0, 1):
        assert sorted(_lines(copy / f"sweep-{m}.jsonl"), key=lambda r: r["index"]) == sorted(
            before[m], key=lambda r: r["index"])

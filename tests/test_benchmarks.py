"""The benchmark scripts stay importable as the library moves, and their pure parts read real records."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py"))


def _load(path: Path):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_imports_and_has_main(path: Path) -> None:
    """A merge that moves a library function must not leave a benchmark that fails at its first line."""
    module = _load(path)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_precision_equivalence_pairs_recorded_runs(capsys) -> None:
    """The bf16/fp32 pairing reads the recorded partial runs (16 images, PGD-2) through the typed records."""
    from freqpure.evaluation.config import load_eval_config

    module = _load(BENCH / "precision_equivalence.py")
    cfg = load_eval_config(BENCH.parent / "configs" / "cifar10-diffpure-table-bundled.yaml")
    module.robust_pair(cfg, 16, 2, BENCH / "results" / "precision-equivalence-partial", precisions=())
    out = capsys.readouterr().out
    assert "(2 steps, EOT 4), 16 images" in out
    assert "| clean | 68.8% | 68.8% | 0 | 0 | 1.000 |" in out
    assert "clean predictions differ on 0 / 16" in out


def test_precision_equivalence_waits_for_both_runs(tmp_path, capsys) -> None:
    from freqpure.evaluation.config import load_eval_config

    module = _load(BENCH / "precision_equivalence.py")
    cfg = load_eval_config(BENCH.parent / "configs" / "cifar10-diffpure-table-bundled.yaml")
    module.robust_pair(cfg, 16, 2, tmp_path, precisions=())
    assert "pairing needs both runs" in capsys.readouterr().out


def _quality_record(model: str, bits: str, *, seed: int = 0, base: float = 0.9) -> dict:
    plan = "DiffPure t*=100, 5 DDPM steps"
    return {"n": len(bits), "subset_seed": 0, "seed": seed, "classifier": "cifar10-resnet-small", "batch": 100,
            "base_accuracy": base, "models": [model], "mse": {},
            "plans": {plan: {"config": {"rounds": "100:5"},
                             "results": {model: {"correct_images": bits, "seconds_per_image": 0.1}}}}}


def test_diffusion_quality_pairs_separate_runs_image_by_image() -> None:
    """Two single-model records pair on their per-image masks: b / c count images, not accuracies."""
    module = _load(BENCH / "diffusion_quality.py")
    merged = module.merge_records([_quality_record("small", "1100110000"), _quality_record("pure", "1010111000")])
    first, second = module.paired_rows(merged)
    assert "| small | 40.0% [16.8, 68.7] | +50.0 | — |" in first
    # pure right only on images 2 and 5, small right only on image 1: b = 2, c = 1
    assert "| pure | 50.0% [23.7, 76.3] | +40.0 | 2 / 1, p = 1 |" in second


@pytest.mark.parametrize("change", [{"seed": 1}, {"base": 0.8}])
def test_diffusion_quality_refuses_records_that_do_not_pair(change) -> None:
    module = _load(BENCH / "diffusion_quality.py")
    with pytest.raises(SystemExit, match="do not pair"):
        module.merge_records([_quality_record("small", "1100"), _quality_record("pure", "1010", **change)])


def test_diffusion_quality_refuses_a_model_measured_twice() -> None:
    module = _load(BENCH / "diffusion_quality.py")
    with pytest.raises(SystemExit, match="in two records"):
        module.merge_records([_quality_record("small", "1100"), _quality_record("small", "1010")])


def test_diffusion_quality_pairs_the_recorded_n1000_runs() -> None:
    """The issue #14 table in RESULTS.md comes from these four records, made in separate processes."""
    import json

    module = _load(BENCH / "diffusion_quality.py")
    folder = BENCH / "results" / "diffusion-quality"
    names = ["small-n1000", "pure3000-a-n1000", "pure3000-c-n1000", "pure3000-b-n1000"]
    merged = module.merge_records([json.loads((folder / f"{n}.json").read_text()) for n in names])
    assert merged["n"] == 1000 and len(merged["plans"]) == 6
    rows = "\n".join(module.paired_rows(merged))
    pure = "work/pure-step3000.safetensors"
    assert f"| DiffPure t*=100, 100 DDPM steps | {pure} | 76.7% [74.0, 79.2] | +13.7 | 7 / 3, p = 0.344 |" in rows
    assert f"| DiffPure v2 plan 20:5*5,50:5*5 | {pure} | 69.9% [67.0, 72.7] | +20.5 | 25 / 13, p = 0.073 |" in rows


def test_diffusion_quality_refuses_unreadable_or_older_records(tmp_path) -> None:
    """A missing file, broken JSON or a record without per-image correctness: one line each, no traceback."""
    module = _load(BENCH / "diffusion_quality.py")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    older = BENCH / "results" / "diffusion-quality" / "pure-step1000-diffpure-n256.json"
    for path, text in [(tmp_path / "absent.json", "cannot read"), (broken, "cannot read"),
                       (older, "not a per-image record")]:
        with pytest.raises(SystemExit, match=text) as info:
            module.read_record(path)
        assert "\n" not in str(info.value)

"""Typed, versioned results of an evaluation: :class:`Results` (``results.json``) and :class:`SampleRecord`
(one line of ``samples.jsonl``), with the math that summarises them.

Every writer builds these dataclasses and every reader (``freqpure table``, ``freqpure report``, the demo,
``benchmarks/paired_runs.py``) goes through :func:`read_results` / :func:`read_samples`, never through
string keys of raw dicts.

The record types live in :mod:`freqpure.evaluation.records`, the schema and the record validator in
:mod:`freqpure.evaluation.schema`; this module reads, checks and writes run folders (``results.json``,
``examples.npz``), renders ``results.md``, and re-exports the names above so that
``freqpure.evaluation.results`` stays the one import path.
"""

from __future__ import annotations

import json
import platform
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from freqpure._fileio import atomic_path, nonfinite_to_null, write_json_atomic
from freqpure.errors import FreqpureError, NotFoundError, UsageError
from freqpure.evaluation.records import (
    Accuracy,
    AttackOutcome,
    Results,
    SampleRecord,
    Timings,
    accuracy,
    read_sample_records,
    upgrade_results_v0,
    wilson_interval,
)
from freqpure.evaluation.schema import LEGACY_NOISE_SCHEME, SCHEMA_VERSION, upgrade_sample_v0, validate_sample
from freqpure.formatting import interval, percent

__all__ = ["wilson_interval", "accuracy", "package_versions", "render_markdown", "assemble_examples",
           "EXAMPLES_MAX", "SCHEMA_VERSION", "LEGACY_NOISE_SCHEME", "Accuracy", "AttackOutcome", "SampleRecord",
           "Timings", "Results", "read_results", "read_samples", "write_results", "upgrade_results_v0",
           "upgrade_sample_v0", "validate_sample", "read_sample_records", "check_results", "read_run"]

EXAMPLES_MAX = 16  # examples.npz holds the first (by subset position) <= 16 samples


def read_results(run_dir: str | Path) -> Results:
    """The :class:`Results` of ``run_dir/results.json`` (any schema version); a clear error when missing."""
    path = Path(run_dir)
    path = path / "results.json" if path.is_dir() or path.suffix != ".json" else path
    if not path.is_file():
        hint = (" (the run is unfinished: resume it with --resume)"
                if (path.parent / "samples.jsonl").exists() else "")
        raise NotFoundError(f"{path} does not exist{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err}); re-run the evaluation") from None
    if isinstance(data, dict) and not all(k in data for k in ("config", "clean", "robust", "per_attack", "n")):
        missing = [k for k in ("config", "clean", "robust", "per_attack", "n") if k not in data]
        raise UsageError(f"{path} lacks {missing}: not a freqpure evaluate results file")
    try:
        results = Results.from_dict(data, str(path))
    except FreqpureError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
        raise UsageError(f"{path}: not a valid results file ({type(err).__name__}: {err}); the file was edited or "
                         "damaged: re-run the evaluation") from None
    return check_results(results, data, str(path))


# config keys every results.json has held since schema 0 and that tables and reports show
_SHOWN_CONFIG = {"purifier": ("method", "rounds", "sampler", "amp_radius", "phase_radius", "delta"),
                 "defence": ("vote", "ensemble"), "classifier": ("name",), "data": ("n",)}
_SHOWN_ATTACK = ("name", "norm", "eps", "steps", "eot", "gradient")


def _normal_config(config: Any, where: str) -> dict[str, Any]:
    """The run's config as a full dict (defaults fill keys an older run lacks); a clear error if it is not one."""
    from freqpure.config.io import from_dict, to_dict
    from freqpure.evaluation.config import EvalConfig

    if not isinstance(config, dict):
        raise UsageError(f"{where}: config must be a JSON object, got {type(config).__name__}")
    attacks = config.get("attacks")
    sections = {**{k: config.get(k) for k in _SHOWN_CONFIG},
                **{f"attacks.{i}": a for i, a in enumerate(attacks if isinstance(attacks, list) else [None])}}
    for name, section in sections.items():
        keys = _SHOWN_CONFIG.get(name, _SHOWN_ATTACK)
        lacking = [k for k in keys if not isinstance(section, dict) or k not in section]
        if lacking:  # shown in tables and reports: a default would silently describe another run
            raise UsageError(f"{where}: config lacks {', '.join(f'{name}.{k}' for k in lacking)}; the file was "
                             "edited or damaged: re-run the evaluation")
    purifier = config.get("purifier")
    raw = {**config, "purifier": {"precision": "fp32", **purifier}} if isinstance(purifier, dict) else config
    try:
        return to_dict(from_dict(EvalConfig, raw))
    except (ValueError, TypeError, KeyError) as err:  # UsageError is a ValueError
        raise UsageError(f"{where}: its config is not a valid evaluation config ({err})") from None


def check_results(results: Results, data: dict[str, Any], where: str) -> Results:
    """Refuse a ``results.json`` whose numbers cannot all be true; return it with its config completed.

    ``data``: the file's JSON (its types are checked: ``n`` and ``seed`` whole numbers, ``name`` text).
    Every accuracy must count the same ``n`` images, the worst case cannot exceed the clean accuracy or
    any attack's, there is one accuracy per attack of the config, and the config must be a valid one.
    """
    for key, kind in (("n", int), ("seed", int), ("name", str), ("defence", str), ("noise_scheme", str)):
        value = data.get(key, getattr(results, key))
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UsageError(f"{where}: {key} must be {'a whole number' if kind is int else 'text'}, got {value!r}")
    if results.n < 1:
        raise UsageError(f"{where}: n = {results.n}: a finished run has evaluated at least one image")
    if not results.per_attack:
        raise UsageError(f"{where}: per_attack is empty (every evaluation attacks); re-run the evaluation")
    entries = {"clean": results.clean, "robust": results.robust,
               **{f"per_attack.{k}": v for k, v in results.per_attack.items()},
               **{f"undefended.{k}": v for k, v in results.undefended.items()}}
    for name, acc in entries.items():
        if acc.n != results.n:
            raise UsageError(f"{where}: {name} counts {acc.n} images but n = {results.n}; the file was edited or "
                             "damaged: re-run the evaluation")
    caps = {"clean": results.clean.correct, **{k: v.correct for k, v in results.per_attack.items()}}
    for name, cap in caps.items():
        if results.robust.correct > cap:
            raise UsageError(f"{where}: the worst case ({results.robust.correct} correct) exceeds {name} ({cap} "
                             "correct), which cannot be: the file was edited or damaged; re-run the evaluation")
    config = _normal_config(results.config, where)
    if len(config["attacks"]) != len(results.per_attack):
        raise UsageError(f"{where}: per_attack has {len(results.per_attack)} entries but the config "
                         f"{len(config['attacks'])} attack(s); the file was edited or damaged")
    return replace(results, config=config)


def read_run(run_dir: str | Path) -> tuple[Results, dict[int, SampleRecord] | None]:
    """A finished run's :class:`Results` and, when ``samples.jsonl`` is there, its validated records.

    The records must add up to ``results.json``: as many images, and the same number correct on the clean
    images, under each attack, in the worst case and in each undefended check — else the run is refused
    (a hand-edited or mismatched ``results.json`` never reaches a table or report).
    """
    folder = Path(run_dir)
    folder = folder.parent if folder.suffix == ".json" and not folder.is_dir() else folder
    results = read_results(folder)
    path = folder / "samples.jsonl"
    if not path.is_file():
        return results, None
    records = read_sample_records(path, attack_labels=results.per_attack,
                                  undefended_keys=results.undefended)
    recs = list(records.values())
    counts = {"n": (results.n, len(recs)), "clean": (results.clean.correct, sum(r.clean_correct for r in recs)),
              "worst case": (results.robust.correct, sum(r.robust for r in recs))}
    counts.update({k: (v.correct, sum(r.attacks[k].correct for r in recs)) for k, v in results.per_attack.items()})
    counts.update({f"undefended {k}": (v.correct, sum(r.undefended[k] for r in recs))
                   for k, v in results.undefended.items()})
    for name, (claimed, recorded) in counts.items():
        if claimed != recorded:
            raise UsageError(f"{folder / 'results.json'} says {name} = {claimed} but its samples.jsonl records give "
                             f"{recorded}: one of them was edited or they belong to different runs; re-run "
                             "the evaluation")
    return results, records


def read_samples(run_dir: str | Path) -> dict[int, SampleRecord]:
    """``{test-image index: SampleRecord}`` of ``run_dir/samples.jsonl`` (finished or still running).

    Read by :func:`read_sample_records` (first record of an index wins; a torn last line is skipped; every
    other line must be a valid record); any schema version.
    """
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist: not an evaluation run directory")
    return read_sample_records(path)


def write_results(run_dir: str | Path, results: Results) -> Path:
    """Write ``results.json`` atomically; returns its path."""
    path = Path(run_dir) / "results.json"
    write_json_atomic(path, results.to_dict(), fsync=True)
    return path


def package_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that change numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("freqpure", "torch", "numpy", "torchsde", "pyautoattack"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _accuracy_cells(entry: Accuracy) -> str:
    """Three cells of the markdown table: ``84.6% | [81.2, 87.4] | 433/512``."""
    return f"{percent(entry.accuracy)} | {interval(entry.ci95)} | {entry.correct}/{entry.n}"


def render_markdown(results: Results) -> str:
    """A markdown summary: the accuracy table, the protocol and the sanity checks."""
    cfg = results.config
    lines = [
        f"# {results.name}",
        "",
        f"Defence: `{results.defence}` · classifier `{cfg['classifier']['name']}` · "
        f"n = {results.n} · seed {results.seed} · noise scheme `{results.noise_scheme}`",
        "",
        "| metric | accuracy | 95% CI (Wilson) | correct/n |",
        "|---|---|---|---|",
        f"| clean (standard) | {_accuracy_cells(results.clean)} |",
        f"| **robust (worst case over attacks)** | {_accuracy_cells(results.robust)} |",
    ]
    for label, entry in results.per_attack.items():
        lines.append(f"| under `{label}` | {_accuracy_cells(entry)} |")
    for label, entry in results.undefended.items():
        lines.append(f"| undefended classifier, PGD {label} (sanity) | {_accuracy_cells(entry)} |")
    lines += ["", "## Protocol", ""]
    for key, value in results.protocol.items():
        if isinstance(value, dict):
            lines.append(f"- **{key}**:")
            lines += [f"  - `{k}`: {v}" for k, v in value.items()]
        else:
            lines.append(f"- **{key}**: {value}")
    if results.sanity:
        lines += ["", "## Sanity checks", ""]
        for key, value in results.sanity.items():
            lines.append(f"- **{key}**: {json.dumps(nonfinite_to_null(value))}")
    if results.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in results.warnings]
    t = results.timings
    lines += ["", f"Time: {t.sample_seconds_total:.1f} s of batch work "
                  f"({t.seconds_per_sample:.2f} s/sample), {results.world_size} process(es)."]
    return "\n".join(lines) + "\n"


def assemble_examples(parts_dir: Path, out_path: Path, class_names: list[str], limit: int = EXAMPLES_MAX) -> int:
    """Concatenate per-batch example parts (``examples-b*.npz``) into ``examples.npz`` in subset order.

    Keys: ``clean``, ``adversarial``, ``purified`` (float32 ``[N, C, H, W]`` in [0, 1]), ``labels``,
    ``pred_clean`` (the defence on the clean image), ``pred_adversarial`` (the defence on the adversarial
    image: the verdict that counts), ``pred_purified`` (the bare classifier on the one purification stored in
    ``purified``) (int64 ``[N]``), ``class_names`` (str), ``positions``.
    Returns N.
    """
    parts = sorted(parts_dir.glob("examples-b*.npz"))
    if not parts:
        return 0
    loaded = [dict(np.load(p)) for p in parts]
    common = [k for k in loaded[0] if all(k in d for d in loaded)]  # parts of an older, resumed run may lack some
    merged = {k: np.concatenate([d[k] for d in loaded]) for k in common}
    order = np.argsort(merged["positions"], kind="stable")[:limit]
    out = {k: v[order] for k, v in merged.items()}
    for key in ("clean", "adversarial", "purified"):
        out[key] = out[key].astype(np.float32)
    for key in ("labels", "pred_clean", "pred_adversarial", "pred_purified", "positions"):
        if key in out:  # pred_purified: absent in parts written before it existed
            out[key] = out[key].astype(np.int64)
    out["class_names"] = np.array(class_names, dtype=str)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **out)
    return len(order)

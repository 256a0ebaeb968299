"""From records to results: an evaluation's ``results.json``, ``results.md`` and ``examples.npz``.

:func:`finalize` reads every record of a run folder (checked, in the run's order) and summarises them, computing
nothing: accuracies with Wilson intervals, the sanity checks (:mod:`freqpure.evaluation.sanity`), timings,
the protocol the numbers were made under (:func:`protocol`) and what the invocation decided at run time
(:func:`runtime_decisions`). The runner (:mod:`freqpure.evaluation.runner`) calls it at the end of a run; the
study calls it for parts whose records were made elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freqpure._fileio import write_text_atomic
from freqpure.config.io import to_dict
from freqpure.errors import RunFolderError
from freqpure.evaluation.components import EvalData
from freqpure.evaluation.config import EvalConfig, run_noise_scheme
from freqpure.evaluation.results import (
    Accuracy,
    Results,
    SampleRecord,
    Timings,
    assemble_examples,
    package_versions,
    read_sample_records,
    render_markdown,
    write_results,
)
from freqpure.evaluation.rundir import run_store, saved_config
from freqpure.evaluation.sanity import sanity_report
from freqpure.noise import IMAGE_ADDRESSING

__all__ = ["checked_records", "finalize", "protocol", "record_environments", "runtime_decisions"]


def _mean_seconds(values: list[float | None]) -> float | None:
    """Mean of per-sample seconds; ``None`` when a record predates the field (an old run resumed)."""
    return None if None in values else sum(values) / len(values)


def checked_records(cfg: EvalConfig, out: Path, wanted: list[int], keys: list[tuple[str, str, float]], *,
                    schema0: bool = False) -> list[SampleRecord]:
    """The records of ``wanted`` (in order), every line of ``samples.jsonl`` checked by
    :func:`~freqpure.evaluation.results.validate_sample` against ``cfg`` (its attacks and sanity checks,
    ``config_sha256`` required, unless ``schema0``: a folder all of whose records predate schema 1, when records
    did not yet name their config); a record of an image outside the run's subset is refused."""
    sanity = cfg.sanity.enabled and cfg.sanity.undefended
    path = out / "samples.jsonl"
    records = read_sample_records(path, require_fingerprint=not schema0,
                                  attack_labels=[a.display() for a in cfg.attacks],
                                  undefended_keys=[k for k, _, _ in keys] if sanity else None)
    extra = sorted(set(records) - set(wanted))
    if extra:
        raise RunFolderError(f"{path} holds records of {len(extra)} image(s) outside this run's subset (index "
                             f"{extra[0]}{', ...' if len(extra) > 1 else ''}): the file was edited or mixes runs; "
                             "restore it or choose a new --out")
    return [records[i] for i in wanted]


def finalize(cfg: EvalConfig, out: Path, data: EvalData, runner: Any, keys: list[tuple[str, str, float]],
             *, wall: float, world_size: int = 1, resumed: bool = False) -> Results:
    """Summarise ``samples.jsonl`` (+ sanity sweep) into results.json / results.md / examples.npz.

    ``runner``: the :class:`~freqpure.evaluation.runner.BatchRunner` that computed records in this invocation
    (its run-time decisions are recorded), or ``None`` for records made elsewhere; ``resumed``: this invocation
    continued a run that already had finished samples.
    """
    raw = run_store(out, cfg).load()
    wanted = [int(i) for i in data.indices]
    missing = [i for i in wanted if i not in raw]
    if missing:
        raise RunFolderError(f"{len(missing)} of {len(wanted)} samples have no record (a rank failed?); "
                           "run again with --resume to finish them")
    # a folder of schema-0 records (before records named their config, 2026-12-02) is summarised as it was then;
    # one schema-1 record makes every record need its fingerprint (a schema-0 line among them was edited)
    schema0 = not any("schema_version" in r for r in raw.values())
    recs = checked_records(cfg, out, wanted, keys, schema0=schema0)
    environments = record_environments(recs, saved_config(out) or to_dict(cfg))
    labels = [a.display() for a in cfg.attacks]
    warnings: list[str] = []
    per_attack = {k: Accuracy.of([r.attacks[k].correct for r in recs]) for k in labels}
    undefended = ({k: Accuracy.of([r.undefended[k] for r in recs]) for k, _, _ in keys}
                  if cfg.sanity.enabled and cfg.sanity.undefended else {})
    sanity = sanity_report(cfg, recs, undefended, out, data, warnings, computed=runner is not None)
    sec = [r.seconds for r in recs]
    total = sum(s["total"] for s in sec)
    timings = Timings(
        sample_seconds_total=total,
        seconds_per_sample=total / len(recs),
        attack_seconds_per_sample=sum(s["attack"] for s in sec) / len(recs),
        judge_seconds_per_sample=sum(s["judge"] for s in sec) / len(recs),
        sanity_seconds_per_sample=sum(s["sanity"] for s in sec) / len(recs),
        per_attack_seconds_per_sample={k: _mean_seconds([r.attacks[k].seconds for r in recs]) for k in labels},
        this_invocation_wall_seconds=wall,
    )
    n_examples = assemble_examples(out / "parts", out / "examples.npz", data.class_names)
    results = Results(
        name=cfg.name, defence=cfg.purifier.method, seed=cfg.seed, n=len(recs), data=data.source,
        clean=Accuracy.of([r.clean_correct for r in recs]), robust=Accuracy.of([r.robust for r in recs]),
        per_attack=per_attack, undefended=undefended, protocol={**protocol(cfg), **runtime_decisions(cfg, runner)},
        sanity=sanity, timings=timings,
        warnings=warnings, world_size=world_size, resumed=resumed, noise_scheme=run_noise_scheme(cfg),
        versions=package_versions(), config=to_dict(cfg), examples={"file": "examples.npz", "n": n_examples},
        environments=environments,
    )
    write_results(out, results)
    write_text_atomic(out / "results.md", render_markdown(results))
    for w in warnings:
        print(f"freqpure evaluate: warning: {w}", flush=True)
    return results


def record_environments(recs: list[SampleRecord], saved: dict[str, Any]) -> dict[str, int]:
    """Images per ``"device/precision"`` they were computed with, e.g. ``{"cuda/bf16": 96, "cpu/fp32": 160}``.

    A record from before records named their environment ran under the run folder's saved config
    (``saved``: its config.yaml as a dict)."""
    from freqpure.evaluation.store import saved_environment

    default_device, default_precision = saved_environment(saved)
    counts: dict[str, int] = {}
    for r in recs:
        key = f"{r.device or default_device}/{r.precision or default_precision}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def runtime_decisions(cfg: EvalConfig, runner: Any) -> dict[str, Any]:
    """What this invocation decided at run time, and why: ``gradient_memory`` (per attack, its run's
    checkpoint decision, :class:`~freqpure.checkpointing.RunCheckpoint`) and ``precision_choice`` (what
    ``precision: auto`` measured, :func:`freqpure.precision.decisions`); keys only where there is one."""
    from freqpure.checkpointing import run_decisions
    from freqpure.precision import decisions

    out: dict[str, Any] = {}
    if runner is not None and runner.batch_choice:  # batch_size: auto
        out["batch_size"] = runner.batch_choice
    found = run_decisions(runner.attack_models) if runner is not None else {}  # None: written from records alone
    if found:
        out["gradient_memory"] = {cfg.attacks[i].display(): d.text() for i, d in sorted(found.items())}
    chosen = decisions()
    if chosen:
        out["precision_choice"] = {f"{d['model']} on {d['machine']}": f"{d['choice']} ({d['source']}): {d['reason']}"
                                   for d in chosen}
    return out


def protocol(cfg: EvalConfig) -> dict[str, Any]:
    """The decisions that change robustness numbers, stated explicitly (field notes §5)."""
    d = cfg.defence
    per_image = cfg.noise_addressing == IMAGE_ADDRESSING
    unit = "image" if per_image else "batch"
    out = {
        "judgement": "one-shot: each attack's final adversarial image is judged once by the defence with its own "
                     f"randomness (noise seeded by (seed, {unit}), independent of the attack's draws); success at an "
                     "intermediate iteration does not count",
        "vote": f"{d.vote} over {d.ensemble} purification(s) per image" if cfg.purifier.method != "none"
        else "deterministic classifier",
        "worst_case_across_attacks": f"robust = correct on the clean image and on the final image of every attack "
                                     f"({len(cfg.attacks)} attack(s))",
        "attacks": {a.display(): a.protocol_text() for a in cfg.attacks},
        "gradients": {a.display(): a.gradient + (f" ({'' if a.surrogate_match else 'MISMATCHED '}surrogate "
                                                  f"{a.surrogate_rounds})" if a.gradient == "surrogate" else "")
                      for a in cfg.attacks},
        "settings": {a.display(): a.settings_key() for a in cfg.attacks},
        "eot": {a.display(): a.eot for a in cfg.attacks},
        "noise": f"independent diffusion noise per EOT draw and per {unit}, derived from (seed, {unit} index, "
                 "purpose) — never from the process rank" + ("; every image draws from its own streams (data-set "
                                                             "index), so the batch size changes no number"
                                                             if per_image else ""),
        "noise_scheme": run_noise_scheme(cfg),
        "classifier_mode": "eval mode, parameters frozen; no clamp, rounding or no_grad on the gradient path "
                           "(except BPDA's identity backward, by design)",
    }
    if cfg.noise_addressing is not None:  # absent: batch-v1 (every run recorded before the key)
        out["noise_addressing"] = cfg.noise_addressing
    return out

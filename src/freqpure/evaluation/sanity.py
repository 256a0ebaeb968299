"""The sanity checks of an evaluation: the eps sweep, a stage of its own with its own records, and the
``sanity`` section of results.json (undefended accuracy, first gradients, the sweep).

The eps sweep runs the first attack again on the first ``sanity.sweep_samples`` images at eps × each
multiplier of ``sanity.eps_sweep`` (in sorted order; ``m`` = a multiplier's place in it). It runs after the
main loop, on every rank, sharded over ``(m, batch)`` as the main loop shards its batches, and writes one
:class:`SweepRecord` per image to ``sweep-{m}.jsonl`` through the same crash-safe store and fingerprints as
``samples.jsonl`` (under the run's lock), so a run killed during the sweep continues it on ``--resume``.
Batch ``b`` of multiplier ``m`` draws from the sweep's own streams (``BatchRunner.stream(..., sweep=m)``:
``(Scope.SWEEP, m, b)``), as it did when the sweep ran inside ``finalize``: the same numbers.
:func:`sweep_report` builds results.json's ``eps_sweep`` from the records.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from freqpure.attacks.settings import EPS_LIMITS, AttackSettings
from freqpure.errors import RunFolderError
from freqpure.evaluation.components import EvalData
from freqpure.evaluation.config import EvalConfig, run_noise_scheme
from freqpure.evaluation.distributed import DistContext
from freqpure.evaluation.records import Accuracy, SampleRecord
from freqpure.evaluation.rundir import run_store
from freqpure.evaluation.schema import SCHEMA_VERSION
from freqpure.evaluation.store import SampleStore
from freqpure.noise import Purpose

__all__ = ["SweepRecord", "run_sweep", "sanity_report", "sweep_attack", "sweep_report", "sweep_store"]


@dataclass(frozen=True)
class SweepRecord:
    """One line of ``sweep-{m}.jsonl``: the defence's verdict on one image attacked at the sweep's eps.

    ``multiplier``: the eps multiplier (``m``-th in sorted order), ``eps``: the radius it gave; ``attack``: the
    label of the attack swept (the run's first); ``batch``: the sweep batch; ``seconds``: attack and judgement
    time per image of the batch; ``device``/``precision``/``noise_scheme``: as in ``samples.jsonl``."""

    index: int
    position: int
    batch: int
    label: int
    attack: str
    multiplier: float
    eps: float
    pred: int
    correct: bool
    seconds: float
    noise_scheme: str
    device: str
    precision: str
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SweepRecord:
        """A stored line → record; a missing key or a wrong type is a :class:`RunFolderError` naming ``where``."""
        try:
            rec = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as err:
            raise RunFolderError(f"{where}: not a sweep record ({err!r}); restore the file or choose a new "
                                 "--out") from None
        if not (isinstance(rec.pred, int) and isinstance(rec.correct, bool) and rec.correct == (rec.pred == rec.label)):
            raise RunFolderError(f"{where}: pred {rec.pred!r} and correct {rec.correct!r} disagree with the label "
                                 f"{rec.label}; restore the file or choose a new --out")
        return rec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_attack(attack: AttackSettings, multiplier: float) -> AttackSettings:
    """The attack at eps × ``multiplier`` (at most the norm's limit), its step size scaled alike, labelled ``sweep``."""
    scaled: dict[str, Any] = {"eps": min(attack.eps * multiplier, EPS_LIMITS[attack.norm_enum]), "label": "sweep"}
    if getattr(attack, "step_size", None) is not None:
        scaled["step_size"] = attack.step_size * multiplier
    return replace(attack, **scaled)


def sweep_store(out: Path, cfg: EvalConfig, m: int, base: SampleStore | None = None) -> SampleStore:
    """The records of multiplier number ``m``: ``sweep-{m}.jsonl``, with the fingerprints of ``samples.jsonl``
    (``base``: the run's :func:`~freqpure.evaluation.rundir.run_store`, when the caller has it already)."""
    base = base or run_store(out, cfg)
    return SampleStore(out / f"sweep-{m}.jsonl", base.fingerprint, numbers=base.numbers, legacy=base.legacy,
                       legacy_numbers=base.legacy_numbers)


def _sweep_batches(cfg: EvalConfig, n: int, batch_size: int) -> list[list[int]]:
    k = min(cfg.sanity.sweep_samples, n)
    return [list(range(s, min(s + batch_size, k))) for s in range(0, k, batch_size)]


def _wanted(cfg: EvalConfig) -> bool:
    return cfg.sanity.enabled and bool(cfg.sanity.eps_sweep)


def run_sweep(runner: Any, data: EvalData, out: Path, ctx: DistContext, progress: bool = False) -> None:
    """Run the sweep's missing ``(multiplier, batch)`` pieces of this rank (``runner``: the run's
    :class:`~freqpure.evaluation.runner.BatchRunner`), appending their records; ends with a barrier."""
    cfg = runner.cfg
    if not _wanted(cfg):
        return
    multipliers = sorted(cfg.sanity.eps_sweep)
    base = run_store(out, cfg)  # config.yaml read once for every multiplier's store
    stores = [sweep_store(out, cfg, m, base) for m in range(len(multipliers))]
    if ctx.is_main:
        for store in stores:
            store.repair()  # before any rank appends
    ctx.barrier()
    done = [set(store.load()) for store in stores]
    batches = _sweep_batches(cfg, len(data.indices), runner.batch_size or cfg.batch_size)
    pieces = [(m, b) for m in range(len(multipliers)) for b in range(len(batches))]
    todo = [pieces[j] for j in ctx.shard(list(range(len(pieces))))
            if not all(int(data.indices[p]) in done[pieces[j][0]] for p in batches[pieces[j][1]])]
    attack = cfg.attacks[0]
    environment = {"noise_scheme": run_noise_scheme(cfg), "device": runner.device.type,
                   "precision": cfg.purifier.precision}
    for m, b in _progress(todo, progress, f"{cfg.name} eps sweep"):
        scaled = sweep_attack(attack, multipliers[m])
        pos = batches[b]
        images = [int(data.indices[p]) for p in pos]
        x, y = data.images(pos).to(runner.device), data.labels[pos].to(runner.device)
        t0 = time.perf_counter()
        result = runner.attack(0, scaled, x, y, b, sweep=m, images=images)  # the sweep's own streams
        pred = runner.defence.predict(result.x_adv, runner.stream(b, images, Purpose.JUDGE, 0, sweep=m))
        seconds = (time.perf_counter() - t0) / len(pos)
        labels, preds = y.tolist(), pred.tolist()
        stores[m].append_records([
            SweepRecord(index=images[s], position=pos[s], batch=b, label=labels[s], attack=attack.display(),
                        multiplier=float(multipliers[m]), eps=float(scaled.eps), pred=int(preds[s]),
                        correct=bool(preds[s] == labels[s]), seconds=seconds, **environment)
            for s in range(len(pos)) if images[s] not in done[m]])
    ctx.barrier()


def _progress(items: list[Any], progress: bool, desc: str) -> Any:
    if not progress or not items:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False)


def sweep_records(cfg: EvalConfig, out: Path, data: EvalData) -> list[list[SweepRecord]] | None:
    """Each multiplier's records of the first ``sweep_samples`` images, in order; ``None`` when one is missing.
    A record of another image is refused (the file was edited or mixes runs)."""
    wanted = [int(i) for i in data.indices[: min(cfg.sanity.sweep_samples, len(data.indices))]]
    found: list[list[SweepRecord]] = []
    base = run_store(out, cfg)
    for m in range(len(cfg.sanity.eps_sweep)):
        store = sweep_store(out, cfg, m, base)
        raw = store.load()
        extra = sorted(set(raw) - set(wanted))
        if extra:
            raise RunFolderError(f"{store.path} holds sweep records of image(s) outside the sweep (index {extra[0]}); "
                                 "restore it or choose a new --out")
        if any(i not in raw for i in wanted):
            return None
        found.append([SweepRecord.from_dict(raw[i], f"{store.path}: index {i}") for i in wanted])
    return found


def sweep_report(cfg: EvalConfig, out: Path, data: EvalData, recs: list[SampleRecord], warnings: list[str], *,
                 computed: bool) -> dict[str, Any]:
    """results.json's ``eps_sweep``: accuracy under the first attack at eps × each multiplier, on the first
    ``sweep_samples`` samples, from the sweep's records (the base eps from ``recs``, the main records).

    ``falls``: ``True`` when accuracy never rises with eps and ends below the base accuracy, ``False``
    otherwise (a warning: gradient masking or a too-weak attack), ``None`` when the base accuracy is
    already 0 — then the sweep cannot fall and says nothing (``verdict``: ``"not informative"``).
    ``computed``: whether this invocation ran the sweep stage; if not and records are missing, the sweep is
    reported as not run (results.json written from the records alone)."""
    attack = cfg.attacks[0]
    found = sweep_records(cfg, out, data)
    if found is None:
        if not computed:
            return {"attack": attack.display(), "samples": 0, "eps": [], "accuracy": [], "falls": None,
                    "verdict": "not run (results.json written from the records alone)"}
        raise RunFolderError(f"{out}: the eps sweep has missing records (a rank failed?); run again with --resume")
    k = min(cfg.sanity.sweep_samples, len(recs))
    base = [r.attacks[attack.display()].correct for r in recs[:k]]
    eps_list, accs = [attack.eps], [sum(base) / k]
    for m, mult in enumerate(sorted(cfg.sanity.eps_sweep)):
        eps_list.append(sweep_attack(attack, mult).eps)
        accs.append(sum(int(r.correct) for r in found[m]) / k)
    if accs[0] == 0:
        falls, verdict = None, "not informative (accuracy is already 0 at the base eps)"
    else:
        falls = all(b <= a for a, b in zip(accs, accs[1:])) and accs[-1] < accs[0]
        verdict = "falls" if falls else "does not fall"
    if falls is False:
        warnings.append(f"accuracy under {attack.display()} does not fall as eps grows "
                        f"({', '.join(f'{e:.4g}: {a:.0%}' for e, a in zip(eps_list, accs))} on {k} samples): "
                        "a sign of gradient masking or a too-weak attack")
    return {"attack": attack.display(), "samples": k, "eps": eps_list, "accuracy": accs, "falls": falls,
            "verdict": verdict}


def sanity_report(cfg: EvalConfig, recs: list[SampleRecord], undefended: dict[str, Accuracy], out: Path,
                  data: EvalData, warnings: list[str], *, computed: bool) -> dict[str, Any]:
    """Undefended accuracy, gradient checks and the eps sweep (:func:`sweep_report`); appends to ``warnings``."""
    s = cfg.sanity
    report: dict[str, Any] = {"enabled": s.enabled}
    if not s.enabled:
        return report
    if s.undefended:
        worst = max((v.accuracy for v in undefended.values()), default=0.0)
        ok = worst <= s.undefended_max_accuracy
        report["undefended_falls"] = {"ok": ok, "max_accuracy": worst, "threshold": s.undefended_max_accuracy}
        if not ok:
            warnings.append(f"the undefended classifier keeps {worst:.0%} accuracy under PGD "
                            f"(> {s.undefended_max_accuracy:.0%}): the attack is too weak to trust the robust numbers")
    if s.gradients and cfg.purifier.method != "none":
        grads = {}
        for a in cfg.attacks:
            norms = [r.attacks[a.display()].grad_norm for r in recs]
            bad = sum(1 for g in norms if g is None or not g > 0)
            grads[a.display()] = {"ok": bad == 0, "samples_with_zero_or_nonfinite_gradient": bad,
                                  "median_norm": float(np.median([g for g in norms if g is not None] or [math.nan]))}
            if bad:
                warnings.append(f"{a.display()}: {bad} sample(s) got a zero or non-finite first gradient through "
                                "the purifier (gradient masking or a broken gradient path)")
        report["gradients_finite_nonzero"] = grads
    if s.eps_sweep:
        report["eps_sweep"] = sweep_report(cfg, out, data, recs, warnings, computed=computed)
    return report

"""Run an evaluation: clean and robust accuracy of a (purified) classifier, resumable and shardable.

Layout of a run directory::

    config.yaml      the full config (a resume with a different config is refused)
    samples.jsonl    one record per sample, appended batch by batch (crash-safe, see store.py)
    parts/           per-batch example images (assembled into examples.npz at the end)
    results.json     summary: accuracies, 95% Wilson intervals, protocol, sanity checks, timings
    results.md       the same as a markdown table
    examples.npz     the first <= 16 samples: clean, adversarial, purified images and predictions

Protocol (also written into results.json): every attack starts from the clean image; its *final*
adversarial image (the best iterate by the attack's own EOT loss) is judged once by the defence, with
the defence's own randomness and ensemble vote (one-shot). A sample is robust if the defence is
correct on the clean image and on the final image of every attack (worst case across attacks).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from freqpure._fileio import atomic_path
from freqpure.attacks.eot import EOTGradient
from freqpure.attacks.gradients import AttackModel
from freqpure.attacks.pgd import pgd
from freqpure.attacks.registry import AttackContext, AttackResult
from freqpure.config.purifier import with_resolved_precision
from freqpure.errors import RunFolderError
from freqpure.evaluation.batching import AUTO, choose_batch_size
from freqpure.evaluation.components import Defence, EvalData, build_defence, load_eval_data, load_models
from freqpure.evaluation.config import AttackConfig, EvalConfig, eps_text, run_noise_scheme
from freqpure.evaluation.distributed import DistContext, init_distributed
from freqpure.evaluation.finalize import finalize
from freqpure.evaluation.results import (
    EXAMPLES_MAX,
    AttackOutcome,
    Results,
    SampleRecord,
)
from freqpure.evaluation.rundir import discard_unused_run_dir, prepare_run_dir, run_store
from freqpure.evaluation.sanity import run_sweep
from freqpure.evaluation.store import SampleStore
from freqpure.noise import NoiseSource, Purpose, pool_stream, run_stream, start_generator
from freqpure.samplers import NOISE_SCHEME

__all__ = ["evaluate", "prepare_run_dir"]


# ---------------------------------------------------------------------------------------------
# Run directory (see freqpure.evaluation.rundir)
# ---------------------------------------------------------------------------------------------
# prepare_run_dir (checks, lock, config.yaml) and discard_unused_run_dir live in freqpure.evaluation.rundir.


# ---------------------------------------------------------------------------------------------
# One batch
# ---------------------------------------------------------------------------------------------
def _norms(x_adv: Tensor, x: Tensor) -> tuple[list[float], list[float]]:
    d = (x_adv - x).flatten(1)
    return d.abs().max(1).values.tolist(), d.norm(dim=1).tolist()


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass
class BatchRunner:
    """Runs the attacks of ``cfg`` on one batch and judges them with ``defence``.

    Attacks are dispatched through the registry (:mod:`freqpure.attacks.registry`): attack ``i``'s
    model is built once by its ``build_model`` and each batch runs its ``run``. ``batch_size``: the images
    per batch this invocation runs (``cfg.batch_size``, or what ``auto`` chose: ``batch_choice`` says why).
    """

    cfg: EvalConfig
    defence: Defence
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    attack_models: dict[int, Any] = field(default_factory=dict)
    batch_size: int = 0
    batch_choice: str | None = None

    def stream(self, batch: int, images: list[int] | None, purpose: Purpose, index: int = 0,
               sweep: int | None = None) -> NoiseSource:
        """The root of ``purpose``'s draws for batch ``batch`` holding data-set images ``images``, under the run's
        ``noise_addressing`` (:func:`freqpure.noise.run_stream`): never of the process rank."""
        return run_stream(self.cfg.noise_addressing, self.cfg.seed, batch, images or [], purpose, index, sweep=sweep,
                          scheme=self.cfg.noise_scheme)

    def _model_for(self, i: int, attack: AttackConfig) -> Any:
        if i not in self.attack_models:
            self.attack_models[i] = attack.spec.build_model(self.defence, attack)
        return self.attack_models[i]

    def attack(self, i: int, attack: AttackConfig, x: Tensor, y: Tensor, batch: int,
               sweep: int | None = None, images: list[int] | None = None) -> AttackResult:
        """Attack ``x`` with attack number ``i``; randomness from ``(seed, batch, i)`` (``image-v1``: ``(seed,
        image, i)`` per row of ``images``) and ``sweep`` only."""

        def stream(purpose: Purpose) -> NoiseSource:
            return self.stream(batch, images, purpose, i, sweep)

        judge = None
        if self.defence.purifier is not None:  # randomised: the defence decides who leaves a pool
            pool = stream(Purpose.POOL)

            def judge(xa: Tensor, ya: Tensor, stage: int) -> Tensor:
                return self.defence.predict(xa, pool_stream(pool, stage)) == ya

        ctx = AttackContext(x, y, noise=stream(Purpose.ATTACK), start=stream(Purpose.START), judge=judge,
                            check_gradients=self.cfg.sanity.enabled and self.cfg.sanity.gradients)
        return attack.spec.run(self._model_for(i, attack), attack, ctx)

    def undefended(self, j: int, norm: str, eps: float, x: Tensor, y: Tensor, batch: int,
                   images: list[int] | None = None) -> Tensor:
        """Sanity: PGD on the bare classifier; returns correctness ``[B]`` (should be ~all False)."""
        steps = self.cfg.sanity.undefended_steps
        bare = AttackModel(self.defence.classifier, None, postprocess=self.defence.post)
        oracle = EOTGradient(bare, loss="ce")
        gen = start_generator(self.stream(batch, images, Purpose.UNDEFENDED, j))
        res = pgd(oracle, x, y, norm=norm, eps=eps, steps=steps, random_init=True, generator=gen)
        with torch.no_grad():
            return bare(res.x_adv).argmax(1) == y

    def run(self, x: Tensor, y: Tensor, batch: int, positions: list[int], indices: list[int],
            undefended_keys: list[tuple[str, str, float]]) -> tuple[list[SampleRecord], dict[str, np.ndarray] | None]:
        """Records for the batch (naming the device and precision that computed them), and its example images
        when it holds one of the first samples."""
        cfg, images = self.cfg, [int(i) for i in indices]
        t0 = time.perf_counter()
        pred_clean = self.defence.predict(x, self.stream(batch, images, Purpose.CLEAN))
        t_judge = time.perf_counter() - t0
        per_attack: list[dict[str, Any]] = []
        advs, preds = [], []
        t_attack = 0.0
        for i, attack in enumerate(cfg.attacks):
            t1 = time.perf_counter()
            out = self.attack(i, attack, x, y, batch, images=images)
            t2 = time.perf_counter()
            pred = self.defence.predict(out.x_adv, self.stream(batch, images, Purpose.JUDGE, i))
            t_attack += t2 - t1
            t_judge += time.perf_counter() - t2
            linf, l2 = _norms(out.x_adv, x)
            per_attack.append({"pred": pred.tolist(), "linf": linf, "l2": l2, "loss": out.loss.tolist(),
                               "grad_norm": out.grad_norm.tolist(), "seconds": (t2 - t1) / len(y)})
            advs.append(out.x_adv)
            preds.append(pred)
        undefended: dict[str, list[bool]] = {}
        t3 = time.perf_counter()
        if cfg.sanity.enabled and cfg.sanity.undefended:
            for j, (key, norm, eps) in enumerate(undefended_keys):
                undefended[key] = self.undefended(j, norm, eps, x, y, batch, images).tolist()
        t_sanity = time.perf_counter() - t3
        seconds = time.perf_counter() - t0
        records = []
        labels = y.tolist()
        for s in range(x.shape[0]):
            attacks = {a.display(): AttackOutcome(
                pred=int(info["pred"][s]), correct=bool(info["pred"][s] == labels[s]), linf=info["linf"][s],
                l2=info["l2"][s], loss=_finite(info["loss"][s]), grad_norm=_finite(info["grad_norm"][s]),
                seconds=info["seconds"]) for a, info in zip(cfg.attacks, per_attack)}
            clean_ok = bool(pred_clean[s].item() == labels[s])
            records.append(SampleRecord(
                index=int(indices[s]), position=int(positions[s]), batch=batch, label=labels[s],
                clean_pred=int(pred_clean[s]), clean_correct=clean_ok, attacks=attacks,
                robust=clean_ok and all(v.correct for v in attacks.values()),
                undefended={k: bool(v[s]) for k, v in undefended.items()},
                seconds={"attack": t_attack / len(labels), "judge": t_judge / len(labels),
                         "sanity": t_sanity / len(labels), "total": seconds / len(labels)},
                device=self.device.type, precision=cfg.purifier.precision, noise_scheme=run_noise_scheme(cfg)))
        examples = self._examples(x, y, batch, positions, pred_clean, advs, preds, images)
        return records, examples

    def _examples(self, x, y, batch, positions, pred_clean, advs, preds, images) -> dict[str, np.ndarray] | None:
        keep = [s for s, p in enumerate(positions) if p < EXAMPLES_MAX]
        if not keep:
            return None
        # Worst case per sample: the first attack that fooled the defence, else the first attack.
        chosen_x, chosen_pred = advs[0].clone(), preds[0].clone()
        fooled = preds[0] != y
        for x_a, p_a in zip(advs[1:], preds[1:]):
            take = (~fooled) & (p_a != y)
            chosen_x[take], chosen_pred[take] = x_a[take], p_a[take]
            fooled |= take
        noise = self.stream(batch, [images[s] for s in keep], Purpose.EXAMPLE)
        purified = self.defence.purify_once(chosen_x[keep], noise)
        with torch.no_grad():  # the bare classifier on this one purification (the grid's caption under it)
            pred_purified = AttackModel(self.defence.classifier, None, postprocess=self.defence.post)(purified)
        return {
            "pred_purified": pred_purified.argmax(1).cpu().numpy().astype(np.int64),
            "clean": x[keep].cpu().numpy().astype(np.float32),
            "adversarial": chosen_x[keep].cpu().numpy().astype(np.float32),
            "purified": purified.cpu().numpy().astype(np.float32),
            "labels": y[keep].cpu().numpy().astype(np.int64),
            "pred_clean": pred_clean[keep].cpu().numpy().astype(np.int64),
            "pred_adversarial": chosen_pred[keep].cpu().numpy().astype(np.int64),
            "positions": np.asarray([positions[s] for s in keep], dtype=np.int64),
        }


def undefended_keys(cfg: EvalConfig) -> list[tuple[str, str, float]]:
    """The distinct (norm, eps) of the attacks, as ``(key, norm, eps)``: one undefended PGD each."""
    seen: dict[str, tuple[str, str, float]] = {}
    for a in cfg.attacks:
        key = f"{a.norm}-{eps_text(a.eps)}"
        seen.setdefault(key, (key, a.norm, a.eps))
    return list(seen.values())


# ---------------------------------------------------------------------------------------------
# Whole run
# ---------------------------------------------------------------------------------------------
def evaluate(
    cfg: EvalConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    models: tuple[nn.Module, nn.Module | None] | None = None,
    ctx: DistContext | None = None,
) -> Results | None:
    """Evaluate ``cfg`` into run dir ``out``; returns its :class:`Results` (on rank 0; ``None`` elsewhere).

    ``models``: ``(classifier, eps_model)`` to use instead of loading ``cfg``'s registry names.
    Under ``torchrun`` the batches are sharded across ranks (see :mod:`freqpure.evaluation.distributed`).
    """
    out = Path(out)
    own_ctx = ctx is None
    ctx = ctx or init_distributed(cfg.device)
    cfg = with_resolved_precision(cfg, ctx.device)  # config.yaml / results.json record fp32 or bf16, never auto
    lock = None
    try:
        lock = prepare_run_dir(out, cfg, resume=resume, write=ctx.is_main)  # held until the run ends
        store = run_store(out, cfg)
        if ctx.is_main:
            store.repair()  # before any rank appends: a torn tail would swallow the next record
        ctx.barrier()
        t_start = time.perf_counter()
        data = load_eval_data(cfg.data)
        classifier, eps_model = models if models is not None else load_models(cfg, ctx.device)
        defence = build_defence(cfg, classifier, eps_model)
        runner = BatchRunner(cfg, defence, ctx.device)
        choice = choose_batch_size(cfg, runner, data, ctx)  # batch_size: auto decided once per invocation
        runner.batch_size, runner.batch_choice = choice.size, choice.text() if cfg.batch_size == AUTO else None
        existing = store.load()
        check_noise_scheme(existing, out, run_noise_scheme(cfg))
        done = set(existing)
        resumed = resume and bool(done)  # a real resume: this invocation continues finished work
        n = len(data.indices)
        size = runner.batch_size
        batches = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
        todo = [b for b in ctx.shard(list(range(len(batches))))
                if not all(int(data.indices[p]) in done for p in batches[b])]
        keys = undefended_keys(cfg)
        _run_batches(runner, data, batches, todo, keys, store, out, ctx, progress, done)
        ctx.barrier()
        run_sweep(runner, data, out, ctx, progress)  # the eps sweep: a resumable stage of its own (sanity.py)
        if not ctx.is_main:
            return None
        return finalize(cfg, out, data, runner, keys, wall=time.perf_counter() - t_start, world_size=ctx.world_size,
                        resumed=resumed)
    except BaseException:
        discard_unused_run_dir(lock)  # a run that failed before its first sample leaves no folder behind
        raise
    finally:
        if lock is not None:
            lock.release()
        if own_ctx:
            ctx.close()


def check_noise_scheme(records: dict[int, dict[str, Any]], out: Path, scheme: str = NOISE_SCHEME) -> None:
    """Refuse to continue a run whose samples were drawn with another noise scheme than ``scheme`` (the run's
    own, :func:`run_noise_scheme`; a record without ``noise_scheme`` predates the field: ``linear-v1``); mixing
    schemes would break replay and pairing."""
    schemes = {r.get("noise_scheme", "linear-v1") for r in records.values()}
    other = sorted(schemes - {scheme})
    if other:
        raise RunFolderError(f"{out} holds samples made with noise scheme {', '.join(other)}; this run draws "
                             f"with {scheme}, so it cannot be continued: choose a new --out")


def _run_batches(runner: BatchRunner, data: EvalData, batches: list[list[int]], todo: list[int],
                 keys: list[tuple[str, str, float]], store: SampleStore, out: Path, ctx: DistContext,
                 progress: bool, done: set[int]) -> None:
    from tqdm.auto import tqdm

    device = ctx.device
    bar = tqdm(total=sum(len(batches[b]) for b in todo), unit="img", disable=not progress,
               desc=f"{runner.cfg.name}" + (f" [rank {ctx.rank}]" if ctx.world_size > 1 else ""),
               position=ctx.rank if ctx.world_size > 1 else None, leave=True)
    n_clean = n_robust = n_seen = 0
    try:
        for b in todo:
            pos = batches[b]
            x, y = data.images(pos).to(device), data.labels[pos].to(device)
            # records name where and how precisely this batch was computed (a run may continue on another device)
            records, examples = runner.run(x, y, b, pos, [int(data.indices[p]) for p in pos], keys)
            if examples is not None:  # images first: a batch with records always has its images
                with atomic_path(out / "parts" / f"examples-b{b:06d}.npz") as tmp, open(tmp, "wb") as f:
                    np.savez_compressed(f, **examples)
            # A batch cut short by a torn write is re-run whole (its noise depends on the whole batch); the
            # records that did reach the file are not written twice (the re-run reproduces them exactly).
            store.append_records([r for r in records if r.index not in done])
            n_seen += len(records)
            n_clean += sum(r.clean_correct for r in records)
            n_robust += sum(r.robust for r in records)
            bar.update(len(records))
            bar.set_postfix(clean=f"{n_clean / n_seen:.0%}", robust=f"{n_robust / n_seen:.0%}")
    finally:
        bar.close()

"""The demo pipeline (``freqpure demo``): one PGD-EOT attack against the bundled classifier, undefended and
defended by DiffPure and FreqPure, on real CIFAR-10 test images; the printed table and the demo summary.

Run directory::

    OUT/none/  OUT/diffpure/  OUT/freqpure/   one evaluation run each (see freqpure.evaluation.runner)
    OUT/results.json                          DemoSummary: settings, the run dirs, the time estimate and wall time
    OUT/grid.png                              clean / adversarial / purified images with predictions and a legend
    OUT/report.html                           the report, written by ``freqpure demo`` (freqpure.report)

Time: :func:`estimate_seconds` times one attack gradient and one defended prediction on one batch and
scales them by the number of gradients and predictions the demo makes (see its docstring).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from freqpure._fileio import write_json_atomic
from freqpure.config.purifier import PurifierConfig, preset
from freqpure.errors import UsageError
from freqpure.evaluation.config import EvalConfig
from freqpure.evaluation.demo_summary import FLAT_PURIFIER_KEYS, DemoSummary
from freqpure.evaluation.results import Results, read_results
from freqpure.formatting import DEFENCES, TITLES

__all__ = ["DemoSettings", "DemoSummary", "DEFENCES", "TITLES", "demo_configs", "run_demo", "estimate_seconds",
           "format_table", "read_demo", "settings_line", "reading_line"]


@dataclass
class DemoSettings:
    """What the demo runs. Defaults: 32 images, PGD of 20 steps (``attack_steps``) in L-inf 8/255 with EOT 2 and
    full gradients through the purifier, a defence that purifies each image 3 times (``ensemble``) and takes the
    majority vote, and the purifier preset ``bundled-table`` (plan 100:5, FreqPure radius 3 = the paper's CIFAR-10
    radius, δ = 0.3; see :mod:`freqpure.presets`) as ``purifier``, whose ``method`` each defence replaces. ``steps``
    is a deprecated spelling of ``attack_steps``; the flat keys ``rounds``, ``radius`` and ``diffusion`` of older
    configs read as ``purifier.rounds``, both radii and ``purifier.diffusion``."""

    n: int = 32
    attack_steps: int = 20
    eot: int = 2
    ensemble: int = 3
    eps: str = "8/255"
    # the defended purifiers (FreqPure; DiffPure and no defence take its method): preset bundled-table
    purifier: PurifierConfig = field(default_factory=lambda: preset("bundled-table"))
    gradient: str = "full"
    surrogate_rounds: str | None = None
    batch_size: int = 8
    sweep: bool = False
    seed: int = 0
    classifier: str = "cifar10-resnet-small"
    data_dir: str | None = None
    steps: int | None = None  # deprecated: attack_steps

    # the purifier keys of older configs, once flat (radius: both radii at once)
    ALIASES: ClassVar[dict[str, Any]] = FLAT_PURIFIER_KEYS

    def __post_init__(self) -> None:
        if self.purifier.method != "freqpure":
            raise UsageError(f"demo purifier.method must be freqpure (the demo runs no defence, DiffPure and FreqPure "
                             f"with it), got {self.purifier.method!r}")
        if self.steps is not None:
            warnings.warn("demo setting 'steps' is deprecated: it is 'attack_steps' (PGD iterations)", FutureWarning,
                          stacklevel=3)
            if self.attack_steps not in (self.steps, DemoSettings.attack_steps):
                raise UsageError(f"demo steps={self.steps} and attack_steps={self.attack_steps} disagree; give "
                                 "attack_steps only")
            self.attack_steps, self.steps = self.steps, None
        for key in ("n", "attack_steps", "eot", "ensemble", "batch_size"):
            if getattr(self, key) < 1:
                raise UsageError(f"demo {key} must be >= 1, got {getattr(self, key)}")
        if self.gradient not in ("full", "surrogate", "bpda"):
            raise UsageError(f"demo gradient must be full, surrogate or bpda, got {self.gradient!r}")


def demo_configs(s: DemoSettings, device: str = "auto") -> dict[str, EvalConfig]:
    """One :class:`EvalConfig` per defence, sharing data, attack, seed and device."""
    from freqpure.evaluation.config import AttackConfig, ClassifierConfig, DataConfig, DefenceConfig, SanityConfig

    surrogate = s.surrogate_rounds
    if s.gradient == "surrogate" and not surrogate:
        from freqpure.attacks.gradients import matched_surrogate

        surrogate = matched_surrogate(s.purifier.rounds)  # keeps *k repeats: 20:5*5,50:5*5 -> 20:1*5,50:1*5
    cfgs = {}
    for method in DEFENCES:
        attack = AttackConfig(name="pgd", norm="linf", eps=s.eps, steps=s.attack_steps, eot=s.eot,
                              gradient=s.gradient if method != "none" else "full",
                              surrogate_rounds=surrogate if method != "none" else None)
        cfgs[method] = EvalConfig(
            name=f"demo-{method}", seed=s.seed, batch_size=s.batch_size, device=device,
            data=DataConfig(dataset="cifar10", n=s.n, data_dir=s.data_dir),
            classifier=ClassifierConfig(name=s.classifier),
            purifier=dataclasses.replace(s.purifier, method=method),
            defence=DefenceConfig(ensemble=s.ensemble if method != "none" else 1),
            attacks=[attack],
            sanity=SanityConfig(eps_sweep=[2.0] if s.sweep else [], sweep_samples=min(8, s.n)),
        )
    return cfgs


def read_demo(out: str | Path) -> tuple[DemoSummary, dict[str, Results]]:
    """The demo summary of ``out`` and each defence's :class:`Results`, in :data:`DEFENCES` order."""
    import json

    out = Path(out)
    path = out / "results.json"
    if not path.is_file():
        raise UsageError(f"{path} does not exist: not a finished demo directory")
    summary = DemoSummary.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
    return summary, {m: read_results(out / d) for m, d in summary.runs.items()}


# ---------------------------------------------------------------------------------------------
# Time estimate
# ---------------------------------------------------------------------------------------------
def estimate_seconds(cfgs: dict[str, EvalConfig], classifier: nn.Module, eps_model: nn.Module | None,
                     done: dict[str, int] | None = None) -> float:
    """Seconds the demo will take, from a 1-batch timing.

    For each defence, times on one batch of ``batch_size`` random images (the shapes matter, not the data) one
    attack gradient (its EOT draws included) and one defended prediction, and once one gradient of the bare
    classifier (each after a warm-up call on one image). Per batch a run makes ``steps`` attack gradients,
    one loss evaluation that picks the kept iterate (costed as a prediction), 3 defended predictions (clean, the
    final adversarial image, the example purification) and, when the sanity check is on, ``undefended_steps``
    bare-classifier gradients. The estimate is the sum over defences of ``batches x per-batch cost``, plus the
    timing itself. ``done``: samples already finished per defence (a resumed demo), left out of the count.
    """
    from freqpure.attacks.eot import EOTGradient, is_stochastic
    from freqpure.attacks.gradients import AttackModel
    from freqpure.evaluation.components import build_defence
    from freqpure.samplers import StepNoise

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    t_begin = time.perf_counter()
    total = 0.0
    t_bare = None
    for method, cfg in cfgs.items():
        b = min(cfg.batch_size, cfg.data.n)
        gen = torch.Generator().manual_seed(0)
        dev = next(classifier.parameters()).device
        x = torch.rand(b, 3, 32, 32, generator=gen).to(dev)
        y = torch.randint(0, 10, (b,), generator=gen).to(dev)
        defence = build_defence(cfg, classifier, eps_model if method != "none" else None)
        attack = cfg.attacks[0]
        model = defence.attack_model(attack)
        eot = attack.eot if is_stochastic(model) else 1  # as the attack runs it: a bare classifier has no draws
        oracle = EOTGradient(model, eot=eot, loss=attack.loss, seed=0)
        oracle(x[:1], y[:1])  # warm-up on one image: the first call pays one-off allocation costs
        t_grad = timed(lambda oracle=oracle, x=x, y=y: oracle(x, y))
        with torch.no_grad():
            t_pred = timed(lambda defence=defence, x=x: defence.predict(x, StepNoise(0)))
        per_batch = attack.steps * t_grad + 4 * t_pred  # the final-loss call is a forward pass: one more prediction
        if cfg.sanity.enabled and cfg.sanity.undefended:
            if t_bare is None:
                bare = EOTGradient(AttackModel(classifier, None), eot=1, loss="ce", seed=0)
                t_bare = timed(lambda bare=bare, x=x, y=y: bare(x, y))
            per_batch += cfg.sanity.undefended_steps * t_bare
        left = max(0, cfg.data.n - (done or {}).get(method, 0))
        total += math.ceil(left / cfg.batch_size) * per_batch
    return total + (time.perf_counter() - t_begin)


def _load_average() -> str:
    """The 1-minute load average and the core count, e.g. ``1.05 on 2 cores`` (``unknown`` off Linux)."""
    try:
        return f"{os.getloadavg()[0]:.2f} on {len(os.sched_getaffinity(0))} cores"
    except (AttributeError, OSError):
        return "unknown"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


# ---------------------------------------------------------------------------------------------
# Calibration of the estimate on this machine
# ---------------------------------------------------------------------------------------------
_CALIBRATION_KEEP = 5  # the last few ratios of a machine: its load changes, its hardware does not


def calibration_file() -> Path:
    """Where the demo keeps its measured ``wall / estimate`` ratios: ``demo-timing.json`` in the user cache folder
    (:func:`freqpure.precision.cache_dir`: ``$FREQPURE_CACHE_DIR``, ``$XDG_CACHE_HOME/freqpure`` or
    ``~/.cache/freqpure``), next to the precision decisions."""
    from freqpure.precision import cache_dir

    return cache_dir() / "demo-timing.json"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else ``unknown CPU``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_key(device: torch.device, threads: int) -> str:
    """What a calibration is valid for: the processor, the thread count and the device."""
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return f"{what} | {threads} thread(s) | {device.type}"


def _read_calibrations(path: Path) -> dict[str, list[float]]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): [float(r) for r in v if isinstance(r, int | float) and 0 < r < 100]
            for k, v in data.items() if isinstance(v, list)}


def calibration(key: str, path: Path | None = None) -> tuple[float, int]:
    """``(factor, runs)``: the median ``wall / estimate`` of the last demos on this machine (1.0, 0 when none)."""
    ratios = _read_calibrations(path or calibration_file()).get(key, [])
    if not ratios:
        return 1.0, 0
    ordered = sorted(ratios)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return min(4.0, max(0.25, median)), len(ratios)


def record_calibration(key: str, ratio: float, path: Path | None = None) -> bool:
    """Add one ``wall / uncalibrated estimate`` ratio for ``key`` (best effort: False when it cannot be written)."""
    path = path or calibration_file()
    data = _read_calibrations(path)
    data[key] = (data.get(key, []) + [round(float(ratio), 4)])[-_CALIBRATION_KEEP:]
    try:
        write_json_atomic(path, data, indent=1, finite=False, newline=False)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def _load_models(s: DemoSettings, device: torch.device) -> tuple[nn.Module, nn.Module]:
    import freqpure

    classifier = freqpure.load_classifier(s.classifier).to(device)
    eps_model = freqpure.load_diffusion(s.purifier.diffusion).to(device)
    for m in (classifier, eps_model):
        m.eval().requires_grad_(False)
    return classifier, eps_model


def run_demo(settings: DemoSettings, out: str | Path, *, overwrite: bool = False, progress: bool = True,
             estimate: bool = True, echo: Callable[[str], None] = print,
             device: str | torch.device = "cpu") -> tuple[DemoSummary, dict[str, Results]]:
    """Run the demo into ``out`` (a re-run with the same settings reuses finished work; ``overwrite`` starts
    afresh), write the summary and the grid; ``echo`` gets the estimate and the table. The report is the
    caller's to write (``freqpure demo`` does, with :func:`freqpure.report.write_report`): the report reads
    what the demo wrote and stands a floor above it."""
    from freqpure.evaluation.runner import evaluate
    from freqpure.plots import make_grid

    out = Path(out)
    device = torch.device(device)
    cfgs = demo_configs(settings, str(device))
    if overwrite:
        for method in DEFENCES:
            shutil.rmtree(out / method, ignore_errors=True)
    t0 = time.perf_counter()
    classifier, eps_model = _load_models(settings, device)
    threads = torch.get_num_threads()
    key = machine_key(device, threads)
    eta = raw = None
    t_estimate = time.perf_counter()
    fresh = False
    if estimate:
        from freqpure.evaluation.store import SampleStore

        done = {m: len(SampleStore(out / m / "samples.jsonl").load()) for m in cfgs}
        fresh = not any(done.values())
        raw = estimate_seconds(cfgs, classifier, eps_model, done)
        factor, runs = calibration(key)
        eta = raw * factor
        how = (f"scaled by {factor:.2f}, the median wall/estimate of {runs} earlier demo(s) here" if runs
               else "not yet calibrated here: each finished demo calibrates the next")
        echo(f"estimated time: about {_minutes(eta)} on {threads} thread(s) of {key.split(' | ')[0]}, load "
             f"{_load_average()} (from a 1-batch timing, {how}; finished work in --out is reused)")
    results = {}
    for method, cfg in cfgs.items():
        results[method] = evaluate(cfg, out / method, resume=True, progress=progress,
                                   models=(classifier, eps_model if method != "none" else None))
    ran = time.perf_counter() - t_estimate
    # calibrate only on runs the estimate describes fully: nothing reused, >= 2 batches per defence (a tiny run
    # is mostly fixed costs)
    if raw and fresh and settings.n >= 2 * settings.batch_size:
        record_calibration(key, ran / raw)
    wall = time.perf_counter() - t0
    summary = DemoSummary(settings=asdict(settings), runs={m: m for m in DEFENCES}, estimate_seconds=eta,
                          wall_seconds=wall, threads=threads, machine=key, load_average=_load_average())
    write_json_atomic(out / "results.json", summary.to_dict(), fsync=True)
    make_grid({TITLES[m]: out / m / "examples.npz" for m in DEFENCES}, out / "grid.png")
    echo(format_table(settings, results))
    echo(f"wall time {_minutes(wall)} on {threads} thread(s)"
         + (f" (estimated {_minutes(eta)})" if eta is not None else "") + f"; grid: {out / 'grid.png'}")
    return summary, results


# ---------------------------------------------------------------------------------------------
# The printed table
# ---------------------------------------------------------------------------------------------
def settings_line(results: Results) -> str:
    """The attack and the defence of a run in words (one line)."""
    from freqpure.evaluation.table import attack_settings

    cfg = results.config
    attack = attack_settings(cfg["attacks"][0])
    p, d = cfg["purifier"], cfg["defence"]
    plan = p["rounds"]
    t_star, _, steps = str(plan).partition(":")
    return (f"attack: {attack} (through the purifier); defence: {d['vote']} vote of {d['ensemble']} purification(s), "
            f"plan {plan} (noise to t*={t_star}, {steps} {p['sampler'].upper()} denoising steps); "
            f"n = {results.n} CIFAR-10 test images, seed {results.seed}")


def _column(k: int, n: int, ci: tuple[float, float]) -> str:
    """One fixed-width cell of the terminal table: ``" 84.6% [81.2,  87.4]"``."""
    return f"{100 * k / n:5.1f}% [{100 * ci[0]:4.1f}, {100 * ci[1]:5.1f}]"


def reading_line(results: dict[str, Results]) -> str:
    """A one-line reading of the table: how many images each defence keeps under attack, and whether the
    difference is larger than the intervals."""
    parts = []
    for method, res in results.items():
        if method == "none":
            continue
        parts.append(f"{TITLES.get(method, method)} keeps {res.robust.correct} of {res.n} images "
                     f"({100 * res.robust.accuracy:.0f}%) correct under attack")
    none = results.get("none")
    text = "; ".join(parts)
    if none is not None:
        text += (f"; without a defence the attack leaves {none.robust.correct} of {none.n}" if text
                 else f"without a defence the attack leaves {none.robust.correct} of {none.n}")
    defended = [r for m, r in results.items() if m != "none"]
    if len(defended) == 2:
        (a, b) = defended
        overlap = a.robust.ci95[0] <= b.robust.ci95[1] and b.robust.ci95[0] <= a.robust.ci95[1]
        text += (". The two defences' intervals overlap: at this n the difference may be noise" if overlap
                 else ". The two defences' intervals do not overlap")
    return text + "."


def format_table(settings: DemoSettings | None, results: dict[str, Results]) -> str:
    """The demo's terminal table: a settings line, percentages with 95% intervals, the sanity check, a reading."""
    ref = results.get("diffpure") or next(iter(results.values()))
    rows = [settings_line(ref), "", f"{'defence':<12} {'clean':>22} {'robust':>22}"]
    for method, res in results.items():
        rows.append(f"{TITLES.get(method, method):<12} {_column(res.clean.correct, res.n, res.clean.ci95):>22} "
                    f"{_column(res.robust.correct, res.n, res.robust.ci95):>22}")
    rows.append("accuracy in % of the images, [95% Wilson interval]; robust = correct on the clean image and on "
                "the attacked one")
    none = results.get("none")
    if none is not None and none.undefended:
        (key, acc), = list(none.undefended.items())[:1]
        steps = none.config["sanity"]["undefended_steps"]
        rows.append(f"sanity: a separate {steps}-step PGD straight at the bare classifier leaves {acc.correct}/{acc.n} "
                    f"correct (it must fall to <= {100 * none.config['sanity']['undefended_max_accuracy']:.0f}%: the "
                    "attack works). It differs from the no-defence robust row, which is the demo's own attack and "
                    "also needs the clean image right.")
    rows.append("reading: " + reading_line(results))
    return "\n".join(rows)

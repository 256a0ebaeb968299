"""Throughput of bf16 against fp32 (and channels-last), measured in one run on the bundled models.

Two workloads, each timed for every variant, the variants interleaved ``--repeats`` times so that a
changing machine load hits them alike (the 1-minute load average is printed with every timing):

* ``attack``: PGD with full gradients through the purifier (per-step checkpointing), ``--pgd-steps``
  iterations, EOT ``--eot``, batch ``--batch`` — DiffPure ``--rounds`` on the bundled
  cifar10-ddpm-small + cifar10-resnet-small; unit: attacked images per minute;
* ``purify``: purification of ``--purify-n`` images without a graph, for each plan in
  ``--purify-rounds`` (default the demo's 100:5 and the official FreqPure ``cifar10.sh`` setting
  t = 1000, 100 DDPM steps); unit: images per second.

Variants: ``fp32``, ``bf16`` (autocast around the ε-model and the classifier), ``bf16-cl``
(bf16 with both networks in channels-last memory format).

    python benchmarks/precision_speed.py --device cpu --threads 1
    python benchmarks/precision_speed.py --device cuda --purify-n 64     # scripts/gpu_check.sh

Prints a table per workload and the speed-up of each variant over fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import freqpure
from freqpure import DiffPure, StepNoise
from freqpure.attacks import AttackModel
from freqpure.attacks.eot import EOTGradient
from freqpure.attacks.pgd import pgd
from freqpure.runtime import configure_threads, run_in_precision

VARIANTS = ("fp32", "bf16", "bf16-cl")


def load_models(device: str):
    eps = freqpure.load_diffusion("cifar10-ddpm-small", device=device).eval().requires_grad_(False)
    clf = freqpure.load_classifier("cifar10-resnet-small", device=device).eval().requires_grad_(False)
    return eps, clf


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def _memory_format(models, variant: str) -> None:
    fmt = torch.channels_last if variant.endswith("-cl") else torch.contiguous_format
    for m in models:
        m.to(memory_format=fmt)


def time_attack(eps, clf, variant: str, args, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds for one PGD run (full gradient, EOT) on ``images``."""
    precision = variant.split("-")[0]
    _memory_format((eps, clf), variant)
    purifier = DiffPure(eps, rounds=args.rounds, precision=precision, checkpoint=True, seed=0)
    model = AttackModel(lambda x: run_in_precision(clf, precision, x), purifier)
    oracle = EOTGradient(model, eot=args.eot, seed=0)
    gen = torch.Generator().manual_seed(0)
    _sync(args.device)
    t0 = time.perf_counter()
    pgd(oracle, images, labels, norm="linf", eps=8 / 255, steps=args.pgd_steps, generator=gen)
    _sync(args.device)
    return time.perf_counter() - t0


def time_purify(eps, variant: str, rounds: str, args, images: torch.Tensor) -> float:
    precision = variant.split("-")[0]
    _memory_format((eps,), variant)
    purifier = DiffPure(eps, rounds=rounds, precision=precision, seed=0)
    _sync(args.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, images.shape[0], args.purify_batch):
            purifier(images[start : start + args.purify_batch], StepNoise(start))
    _sync(args.device)
    return time.perf_counter() - t0


def report(title: str, unit: str, work: float, times: dict[str, list[float]]) -> dict[str, float]:
    print(f"\n## {title}")
    print(f"{'variant':>8} {'median s':>9} {unit:>14} {'vs fp32':>8}  runs (s)")
    med = {v: statistics.median(t) for v, t in times.items()}
    for v, m in med.items():
        runs = " ".join(f"{t:.1f}" for t in times[v])
        print(f"{v:>8} {m:>9.2f} {work / m:>14.2f} {med['fp32'] / m:>7.2f}x  {runs}")
    return {v: med["fp32"] / m for v, m in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the thread policy)")
    ap.add_argument("--workloads", default="attack,purify")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", default="100:5", help="attack: the defence's plan (default: the demo's 100:5)")
    ap.add_argument("--pgd-steps", type=int, default=5)
    ap.add_argument("--eot", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--purify-rounds", default="100:5;1000:100",
                    help="';'-separated plans (default: the demo's 100:5 and the official cifar10.sh 1000:100)")
    ap.add_argument("--purify-n", type=int, default=16)
    ap.add_argument("--purify-batch", type=int, default=16)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    configure_threads(args.threads)
    variants = args.variants.split(",")
    if variants[0] != "fp32":
        raise SystemExit("the first variant must be fp32 (the baseline)")

    from types import SimpleNamespace

    from freqpure.data import eval_subset

    n_images = max(args.batch, args.purify_n, 10)
    try:
        sub = eval_subset(n_images, seed=0)
    except FileNotFoundError:  # no CIFAR-10 here (e.g. a bare GPU box): timings do not depend on the pixels
        gen = torch.Generator().manual_seed(0)
        sub = SimpleNamespace(x=torch.rand(n_images, 3, 32, 32, generator=gen),
                              y=torch.randint(0, 10, (n_images,), generator=gen))
        print("# CIFAR-10 not found (set FREQPURE_DATA): random images")
    eps, clf = load_models(args.device)
    print(f"# device {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"load at start {_load()}")
    out: dict[str, object] = {"device": args.device, "threads": torch.get_num_threads(), "load_start": _load()}
    workloads = args.workloads.split(",")
    for v in variants:  # warm-up: oneDNN builds its kernels for each dtype/format/shape on first use
        time_purify(eps, v, "100:1", args, sub.x[: args.purify_batch].to(args.device))
        if "attack" in workloads:
            x, y = sub.x[: args.batch].to(args.device), sub.y[: args.batch].to(args.device)
            EOTGradient(AttackModel(lambda z, v=v: run_in_precision(clf, v.split("-")[0], z),
                                    DiffPure(eps, rounds="100:1", precision=v.split("-")[0], checkpoint=True)),
                        eot=args.eot)(x, y)
    if "attack" in workloads:
        x = sub.x[: args.batch].to(args.device)
        y = sub.y[: args.batch].to(args.device)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(args.repeats):
            for v in variants:
                dt = time_attack(eps, clf, v, args, x, y)
                times[v].append(dt)
                print(f"attack  {v:>8} repeat {r}: {dt:.2f} s  (load {_load()})", flush=True)
        out["attack"] = {"times": times, "speedup": report(
            f"attack gradient: PGD {args.pgd_steps} steps, EOT {args.eot}, batch {args.batch}, full gradient, "
            f"DiffPure {args.rounds}", "images/min", args.batch * 60, times)}
    if "purify" in workloads:
        x = sub.x[: args.purify_n].to(args.device)
        for rounds in args.purify_rounds.split(";"):
            times = {v: [] for v in variants}
            for r in range(args.repeats):
                for v in variants:
                    dt = time_purify(eps, v, rounds, args, x)
                    times[v].append(dt)
                    print(f"purify {rounds} {v:>8} repeat {r}: {dt:.2f} s  (load {_load()})", flush=True)
            out[f"purify {rounds}"] = {"times": times, "speedup": report(
                f"purification DiffPure {rounds}, {args.purify_n} images, batch {args.purify_batch}", "images/s",
                args.purify_n, times)}
    out["load_end"] = _load()
    print(f"\n# load at end {_load()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

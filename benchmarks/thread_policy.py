"""Wall time of ``freqpure purify`` / ``freqpure demo`` under a background load: thread policies compared.

Each variant runs the same command in a fresh process (so that OpenMP reads its environment anew);
the variants are interleaved, ``--repeats`` times, while ``--load`` busy-looping processes run in the
background (on top of whatever else the machine is doing: the 1-minute load average is printed with
every run). Variants:

* ``old``: torch's own defaults (``FREQPURE_THREAD_POLICY=torch``: spinning OpenMP wait, one thread per core);
* ``new``: freqpure's default thread policy (passive wait, threads = idle cores at start);
* ``one``: ``OMP_NUM_THREADS=1``;
* ``old32``: ``old`` and ``precision: auto`` meaning fp32 (for ``demo``, which has no precision flag).

    python benchmarks/thread_policy.py --load 1 --repeats 3
    python benchmarks/thread_policy.py --command demo --variants old32,new

Prints one row per run, then the median per variant and the ratios old/new and new/one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "old": {"FREQPURE_THREAD_POLICY": "torch"},
    "new": {},
    "one": {"OMP_NUM_THREADS": "1"},
    # the pre-branch behaviour in full: torch's thread defaults and fp32 (what precision ``auto`` meant before)
    "old32": {"FREQPURE_THREAD_POLICY": "torch", "FREQPURE_PRECISION": "fp32"},
}


def _spin() -> None:  # pragma: no cover - background load
    x = 0
    while True:
        x += 1


def _images(folder: Path, n: int) -> None:
    from freqpure.data import eval_subset
    from freqpure.imageio import write_png

    sub = eval_subset(max(n, 10))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(sub.x[i], folder / f"{i}.png")


def _command(args: argparse.Namespace, work: Path, run: int) -> list[str]:
    out = work / f"out{run}"
    base = [sys.executable, "-m", "freqpure"]
    if args.command == "purify":
        return base + ["purify", str(work / "images"), "--out", str(out), "--method", args.method,
                       "--rounds", args.rounds, "--device", "cpu", "--precision", args.precision]
    return base + ["demo", "--out", str(out), "--no-progress"] + shlex.split(args.demo_args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--command", choices=("purify", "demo"), default="purify")
    ap.add_argument("--images", type=int, default=5, help="purify: images (default 5)")
    ap.add_argument("--method", default="diffpure")
    ap.add_argument("--rounds", default="100:5")
    ap.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--demo-args", default="--n 8 --steps 2 --eot 1 --ensemble 1",
                    help="demo: its flags (default: a small demo)")
    ap.add_argument("--load", type=int, default=1, help="background busy-loop processes (default 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="old,new,one")
    args = ap.parse_args()
    variants = args.variants.split(",")

    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    times: dict[str, list[float]] = {v: [] for v in variants}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if args.command == "purify":
                _images(work / "images", args.images)
            time.sleep(2)
            print(f"# {args.command}, background spinners: {args.load}, cores: {os.cpu_count()}")
            print(f"{'run':>4} {'variant':>8} {'seconds':>8} {'load1':>6}")
            run = 0
            for _ in range(args.repeats):
                for v in variants:
                    env = {k: x for k, x in os.environ.items()
                           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "FREQPURE_THREADS",
                                        "FREQPURE_THREAD_POLICY", "FREQPURE_PRECISION")}
                    env.update(VARIANTS[v])
                    cmd = _command(args, work, run)
                    t0 = time.perf_counter()
                    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    dt = time.perf_counter() - t0
                    times[v].append(dt)
                    print(f"{run:>4} {v:>8} {dt:>8.2f} {os.getloadavg()[0]:>6.2f}", flush=True)
                    run += 1
    finally:
        for p in spinners:
            p.terminate()
    med = {v: statistics.median(t) for v, t in times.items()}
    print("\nmedian seconds: " + ", ".join(f"{v} {m:.2f}" for v, m in med.items()))
    for old in ("old", "old32"):
        if old in med and "new" in med:
            print(f"{old} / new = {med[old] / med['new']:.2f}  (> 1: the new default is faster)")
    if "new" in med and "one" in med:
        print(f"new / one = {med['new'] / med['one']:.2f}  (<= 1: never slower than one thread)")


if __name__ == "__main__":
    main()

"""One reverse step's noise draw for a row-addressed batch, before and after #25, in one run.

``PurifiedClassifier`` gives every image × ensemble draw its own stream, so a step of a ``[R, 3, 32, 32]``
batch draws ``R`` streams. Timed (best of ``--repeats``, interleaved):

* ``blake2b-philox-v2, unmodified``: the code of c71875b, written out here: per stream a fresh numpy
  ``Generator(Philox(key))``, ``standard_normal``, ``torch.from_numpy`` and a copy, then ``torch.cat``;
* ``blake2b-philox-v2, now``: :class:`~freqpure.samplers.DrawNoise` today (one host buffer, a re-keyed
  generator, one copy; the same numbers to the bit, checked here);
* ``counter-v1``: the counter scheme, made on ``--device`` in one batched call.

    python benchmarks/noise_speed.py --rows 128,320 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from freqpure.noise import CounterNoise
from freqpure.runtime import configure_threads
from freqpure.samplers import DrawNoise, StepNoise


def unmodified_draw(streams: list[StepNoise], key: int, like: torch.Tensor) -> torch.Tensor:
    """c71875b's ``DrawNoise.__call__`` with one-row streams: a generator per stream, then one ``cat``."""
    part = like[:1]
    outs = []
    for s in streams:
        rng = np.random.Generator(np.random.Philox(key=s.key(key)))
        z = torch.from_numpy(rng.standard_normal(tuple(part.shape), dtype=np.float32))
        outs.append(z.to(device=like.device, dtype=like.dtype))
    return torch.cat(outs)


def best(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="128,320")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}, threads {threads}, torch {torch.__version__}, load {load:.2f}")
    print("| rows | blake2b-philox-v2, unmodified (ms) | blake2b-philox-v2, now (ms) | speed-up | counter-v1 (ms) |")
    print("|---|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",")):
        like = torch.empty(rows, 3, 32, 32, device=device)
        old_streams = StepNoise(7).rows(rows)
        old = DrawNoise(old_streams)
        new = DrawNoise(CounterNoise(7).rows(rows))
        assert torch.equal(old(3, like).cpu(), unmodified_draw(old_streams, 3, like).cpu())  # same numbers
        t_unmod = best(lambda s=old_streams, x=like: unmodified_draw(s, 3, x), args.repeats, device)
        t_now = best(lambda d=old, x=like: d(3, x), args.repeats, device)
        t_counter = best(lambda d=new, x=like: d(3, x), args.repeats, device)
        print(f"| {rows} | {t_unmod * 1e3:.1f} | {t_now * 1e3:.1f} | {t_unmod / t_now:.2f}x | {t_counter * 1e3:.1f} |")


if __name__ == "__main__":
    main()

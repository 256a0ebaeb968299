"""Does ``torch.compile`` pay for itself on the bundled ε-UNet? Eager against compiled, in one run.

Compiles ``cifar10-ddpm-small`` (inductor, static shapes) for a batch of ``--batch`` and times, median of
5, a no-grad forward (purification) and a forward + backward (attack gradient), eager and compiled
interleaved ``--repeats`` times. Prints the one-off compile times, the ratios and the largest output
difference (fp32 reassociation only).

    python benchmarks/compile_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import freqpure
from freqpure.runtime import configure_threads


def _median_time(model, x: torch.Tensor, t: torch.Tensor, grad: bool) -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        if grad:
            model(x.clone().requires_grad_(True), t).sum().backward()
        else:
            with torch.no_grad():
                model(x, t)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    configure_threads(args.threads)
    eps = freqpure.load_diffusion("cifar10-ddpm-small").eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(args.batch, 3, 32, 32, generator=gen), torch.full((args.batch,), 50.0)
    print(f"# cifar10-ddpm-small, batch {args.batch}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"load at start {os.getloadavg()[0]:.2f}")
    compiled = torch.compile(eps, dynamic=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled(x, t)
    print(f"compile, no-grad graph: {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    compiled(x.clone().requires_grad_(True), t).sum().backward()
    print(f"compile, training graph: {time.perf_counter() - t0:.1f} s", flush=True)
    with torch.no_grad():
        diff = (eps(x, t) - compiled(x, t)).abs().max().item()
    print("| workload | eager (s) | compiled (s) | eager / compiled | load |")
    print("|---|---|---|---|---|")
    for _ in range(args.repeats):
        for grad in (False, True):
            e, c = _median_time(eps, x, t, grad), _median_time(compiled, x, t, grad)
            name = "forward + backward" if grad else "no-grad forward"
            print(f"| {name} | {e:.3f} | {c:.3f} | {e / c:.2f}x | {os.getloadavg()[0]:.2f} |", flush=True)
    print(f"max |eager - compiled| output: {diff:.2e}")


if __name__ == "__main__":
    main()

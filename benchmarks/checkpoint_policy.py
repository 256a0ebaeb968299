"""Attack-gradient speed of the checkpoint policies, measured in one run on the bundled models.

One EOT gradient of ``classifier(purifier(x))`` (the unit of every PGD/APGD iteration) for a batch of
``--batch`` real CIFAR-10 test images with ``--eot`` draws, for each plan the project attacks:

* ``DiffPure 100:5`` and ``FreqPure paper 100:5`` (the n = 512 table, the demo);
* ``FreqPure official, surrogate 20:1*5,50:1*5`` (the verdict study's matched surrogate of the v2 plan);

each under ``checkpoint=True`` (the policy before session 18: always recompute every step) and
``"auto"`` (plain backprop when the measured graph fits; :mod:`freqpure.checkpointing`), interleaved
``--repeats`` times so that a changing load hits both alike. Checks that the two gradients are equal to
the bit and prints the median time of each, the ratio and the graph size ``auto`` measured.

    python benchmarks/checkpoint_policy.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import freqpure
from freqpure import DiffPure, FreqPure, StepNoise
from freqpure.attacks import AttackModel
from freqpure.attacks.eot import EOTGradient
from freqpure.data import eval_subset
from freqpure.runtime import configure_threads

PLANS = {
    "DiffPure 100:5": lambda eps, c: DiffPure(eps, rounds="100:5", checkpoint=c),
    "FreqPure paper 100:5 (r=3)": lambda eps, c: FreqPure(eps, 3, 3, 0.3, rounds="100:5", checkpoint=c),
    "FreqPure official, surrogate 20:1*5,50:1*5": lambda eps, c: FreqPure(
        eps, 3, 3, 0.3, rounds="20:1*5,50:1*5", variant="official", checkpoint=c),
}


def _auto_policy_of(purifier, x: torch.Tensor):
    """The decision ``"auto"`` takes for one call of ``purifier`` on ``x`` (batch x EOT images, as the
    oracle calls it), caught from :func:`freqpure.checkpointing.checkpoint_policy`."""
    import freqpure.purifiers as purifiers

    made = []
    original = purifiers.checkpoint_policy

    def catching(*a, **k):
        made.append(original(*a, **k))
        return made[-1]

    purifiers.checkpoint_policy = catching
    try:
        purifier(x.clone().requires_grad_(True), StepNoise(0))
    finally:
        purifiers.checkpoint_policy = original
    return made[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eot", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    configure_threads(args.threads)
    eps = freqpure.load_diffusion("cifar10-ddpm-small").eval().requires_grad_(False)
    clf = freqpure.load_classifier("cifar10-resnet-small").eval().requires_grad_(False)
    data = eval_subset(args.batch, seed=0)
    x, y = data.x, data.y
    print(f"# attack gradient, batch {args.batch} x EOT {args.eot}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}, load at start {os.getloadavg()[0]:.2f}")
    print("| plan | always (s) | auto (s) | always / auto | auto measured graph / step | same gradient |")
    print("|---|---|---|---|---|---|")
    for name, make in PLANS.items():
        times: dict[object, list[float]] = {True: [], "auto": []}
        grads: dict[object, torch.Tensor] = {}
        for _ in range(args.repeats):
            for setting in (True, "auto"):
                purifier = make(eps, setting)
                oracle = EOTGradient(AttackModel(clf, purifier), eot=args.eot, seed=0)
                t0 = time.perf_counter()
                grads[setting] = oracle(x, y)[1]
                times[setting].append(time.perf_counter() - t0)
        policy = _auto_policy_of(make(eps, "auto"), x[:1].repeat(args.eot * args.batch, 1, 1, 1))
        a, b = statistics.median(times[True]), statistics.median(times["auto"])
        same = torch.equal(grads[True], grads["auto"])
        print(f"| {name} | {a:.2f} | {b:.2f} | **{a / b:.2f}x** | {policy.step_bytes / 2**20:.0f} MiB "
              f"({'plain' if not policy.checkpoint else 'checkpointed'}) | {same} |", flush=True)
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""What purification costs on clean images: classifier accuracy before and after DiffPure / FreqPure.

The bundled-model quality targets (issue #3) are judged this way on >= 1,000 real CIFAR-10 test images:
FreqPure keeps the bundled classifier within 4 points of its unpurified accuracy, DiffPure at t* = 100
within 10 points.

    python benchmarks/purified_accuracy.py --n 1000
    python benchmarks/purified_accuracy.py --n 256 --sweep     # compare a few FreqPure settings

Prints a markdown table (accuracy, drop in points, 95% Wilson interval, seconds per image).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import freqpure
from freqpure.config import PurifierConfig, build_purifier
from freqpure.data import eval_subset
from freqpure.samplers import StepNoise

DEFAULT_ROWS = {
    "FreqPure (defaults)": PurifierConfig(),
    "DiffPure t*=100, 100 DDPM steps": PurifierConfig(method="diffpure", rounds="100:100"),
    "DiffPure t*=0.1, VP-SDE Euler 100 steps": PurifierConfig(method="diffpure", rounds="100:100", sampler="sde"),
    "DiffPure t*=100, 20 DDPM steps": PurifierConfig(method="diffpure", rounds="100:20"),
    "FreqPure r=3, t*=100, 5 steps (robustness table)": PurifierConfig(rounds="100:5", amp_radius=3, phase_radius=3),
    "DiffPure t*=100, 5 DDPM steps (robustness table)": PurifierConfig(method="diffpure", rounds="100:5"),
}
SWEEP_ROWS = {
    "FreqPure r=10, t*=100, 20 steps": PurifierConfig(rounds="100:20"),
    "FreqPure r=3, t*=100, 20 steps": PurifierConfig(rounds="100:20", amp_radius=3, phase_radius=3),
    "FreqPure r=6, t*=100, 20 steps": PurifierConfig(rounds="100:20", amp_radius=6, phase_radius=6),
    "FreqPure r=10, t*=200, 20 steps": PurifierConfig(rounds="200:20"),
    "FreqPure r=10, reference mode, denoised ref": PurifierConfig(rounds="100:20", mode="reference",
                                                                  reference="denoised"),
    "FreqPure r=3, v2 plan 20:5*5,50:5*5": PurifierConfig(rounds="20:5*5,50:5*5", amp_radius=3, phase_radius=3),
}


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--ensemble", type=int, default=1, help="majority vote over this many purifications")
    parser.add_argument("--classifier", default="cifar10-resnet-small")
    parser.add_argument("--diffusion", default="cifar10-ddpm-small")
    parser.add_argument("--sweep", action="store_true", help="compare FreqPure settings instead")
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = eval_subset(args.n, seed=0)
    classifier = freqpure.load_classifier(args.classifier)
    eps_model = freqpure.load_diffusion(args.diffusion)
    rows = SWEEP_ROWS if args.sweep else DEFAULT_ROWS
    if args.only:
        rows = {name: cfg for name, cfg in rows.items() if args.only in name}

    def accuracy(predict) -> tuple[int, float]:
        correct, started = 0, time.perf_counter()
        for b, start in enumerate(range(0, args.n, args.batch)):
            x, y = data.x[start : start + args.batch], data.y[start : start + args.batch]
            correct += int((predict(x, b) == y).sum())
        return correct, (time.perf_counter() - started) / args.n

    print(f"n={args.n} (class-balanced test subset), classifier {args.classifier}, diffusion {args.diffusion}, "
          f"ensemble {args.ensemble}, seed {args.seed}, torch {torch.__version__}, {args.threads} threads")
    print("| defence | settings | accuracy | drop (points) | 95% interval | s / image |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        base, base_time = accuracy(lambda x, b: classifier(x).argmax(-1))
        lo, hi = wilson(base, args.n)
        print(f"| none | - | {base / args.n:.2%} | - | [{lo:.1%}, {hi:.1%}] | {base_time:.4f} |")
        for name, cfg in rows.items():
            purifier = build_purifier(cfg, eps_model, seed=args.seed)
            defended = freqpure.PurifiedClassifier(classifier, purifier, ensemble=args.ensemble)
            correct, per_image = accuracy(lambda x, b, d=defended: d(x, StepNoise(args.seed).child(b)).argmax(-1))
            lo, hi = wilson(correct, args.n)
            settings = (f"rounds {cfg.rounds}, {cfg.sampler}" + (
                f", r_a {cfg.amp_radius:g}, r_p {cfg.phase_radius:g}, delta {cfg.delta:g}, {cfg.mode}, "
                f"ref {cfg.reference}" if cfg.method == "freqpure" else ""))
            print(f"| {name} | {settings} | {correct / args.n:.2%} | {100 * (base - correct) / args.n:+.1f} | "
                  f"[{lo:.1%}, {hi:.1%}] | {per_image:.4f} |", flush=True)


if __name__ == "__main__":
    main()

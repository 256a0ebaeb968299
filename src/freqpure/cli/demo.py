"""``freqpure demo``: the README's first command.

On the bundled CPU models and real CIFAR-10 test images, attack the undefended classifier and the
DiffPure- and FreqPure-defended ones with PGD-EOT (L∞ 8/255, full gradients through the purifier),
print the clean / robust accuracy table, and write a run directory::

    OUT/none/  OUT/diffpure/  OUT/freqpure/   one evaluation run dir each (see freqpure.evaluation.runner)
    OUT/results.json                          the table and the settings
    OUT/grid.png                              clean, adversarial and purified images with predictions

The default size (32 images, PGD 20 iterations, EOT 2, 3-vote ensemble, 5-step purification) takes
about 5 minutes on one CPU thread; ``--n``, ``--steps``, ``--eot``, ``--ensemble`` scale it up.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "demo_configs", "make_grid"]

DEFENCES = ("none", "diffpure", "freqpure")
TITLES = {"none": "no defence", "diffpure": "DiffPure", "freqpure": "FreqPure"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="attack the bundled classifier with and without DiffPure/FreqPure (PGD-EOT) and print the table",
        description="PGD-EOT (L-inf) against the bundled CIFAR-10 classifier, undefended and defended by DiffPure and "
                    "FreqPure with the bundled diffusion model; real CIFAR-10 test images. Writes OUT/results.json, "
                    "OUT/grid.png and one evaluation run dir per defence.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)")
    p.add_argument("--n", type=int, default=32, help="test images, class-balanced (default: 32)")
    p.add_argument("--steps", type=int, default=20, help="PGD iterations (default: 20)")
    p.add_argument("--eot", type=int, default=2, help="EOT draws per gradient (default: 2)")
    p.add_argument("--ensemble", type=int, default=3, help="purifications per image in the defence's vote (default: 3)")
    p.add_argument("--eps", default="8/255", help="L-inf radius (default: 8/255)")
    p.add_argument("--rounds", default="100:5", help="purification plan t*:steps (default: 100:5)")
    p.add_argument("--radius", type=float, default=3.0,
                   help="FreqPure amplitude and phase radius, frequency-index units (default: 3, the paper's CIFAR-10 "
                        "setting: 2.8%% of a 32x32 spectrum)")
    p.add_argument("--gradient", default="full", choices=("full", "surrogate", "bpda"),
                   help="gradient through the purifier (default: full, exact and checkpointed)")
    p.add_argument("--surrogate-rounds", default=None, help="surrogate plan for --gradient surrogate (default t*:1)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    p.add_argument("--sweep", action="store_true", help="also run the eps-sweep sanity check (slower)")
    p.add_argument("--classifier", default="cifar10-resnet-small", help="classifier name or weights file "
                   "(default: the bundled cifar10-resnet-small)")
    p.add_argument("--diffusion", default="cifar10-ddpm-small", help="diffusion model name or weights file "
                   "(default: the bundled cifar10-ddpm-small)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1 — robust on a shared machine, where extra threads spin-wait; "
                        "give 2 on an idle 2-core machine)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: delete the demo's run dirs in --out first (by default a re-run with the same "
                        "flags reuses finished work and a killed demo continues where it stopped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def demo_configs(args: argparse.Namespace) -> dict[str, Any]:
    """One :class:`~freqpure.evaluation.config.EvalConfig` per defence, sharing data, attack and seed."""
    from freqpure.config import PurifierConfig
    from freqpure.evaluation.config import (
        AttackConfig,
        ClassifierConfig,
        DataConfig,
        DefenceConfig,
        EvalConfig,
        SanityConfig,
    )

    surrogate = args.surrogate_rounds
    if args.gradient == "surrogate" and not surrogate:
        from freqpure.attacks.gradients import matched_surrogate

        surrogate = matched_surrogate(args.rounds)  # keeps *k repeats: 20:5*5,50:5*5 -> 20:1*5,50:1*5
    cfgs = {}
    for method in DEFENCES:
        attack = AttackConfig(name="pgd", norm="linf", eps=args.eps, steps=args.steps, eot=args.eot,
                              gradient=args.gradient if method != "none" else "full",
                              surrogate_rounds=surrogate if method != "none" else None)
        cfgs[method] = EvalConfig(
            name=f"demo-{method}",
            seed=args.seed,
            batch_size=args.batch_size,
            data=DataConfig(dataset="cifar10", n=args.n),
            classifier=ClassifierConfig(name=args.classifier),
            purifier=PurifierConfig(method=method, diffusion=args.diffusion, rounds=args.rounds,
                                    amp_radius=args.radius, phase_radius=args.radius),
            defence=DefenceConfig(ensemble=args.ensemble if method != "none" else 1),
            attacks=[attack],
            sanity=SanityConfig(eps_sweep=[2.0] if args.sweep else [], sweep_samples=min(8, args.n)),
        )
    return cfgs


def run(args: argparse.Namespace) -> int:
    import torch

    from freqpure.evaluation.results import write_json
    from freqpure.evaluation.runner import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    cfgs = demo_configs(args)
    if args.overwrite:
        for method in DEFENCES:
            shutil.rmtree(out / method, ignore_errors=True)
    t0 = time.perf_counter()
    models = _load_models(args.classifier, args.diffusion)
    table = []
    for method, cfg in cfgs.items():
        res = evaluate(cfg, out / method, resume=True, progress=not args.no_progress,
                       models=(models[0], models[1] if method != "none" else None))
        table.append({"defence": method, "title": TITLES[method], "n": res["n"], "clean": res["clean"],
                      "robust": res["robust"], "undefended_sanity": res.get("undefended"),
                      "warnings": res["warnings"], "run_dir": method})
    wall = time.perf_counter() - t0
    attack = cfgs["freqpure"].attacks[0]
    summary = {
        "name": "freqpure demo",
        "attack": attack.display().replace(f"-{attack.gradient}", ""),
        "gradient": attack.gradient,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "table": table,
        "wall_seconds": wall,
        "threads": torch.get_num_threads(),
        "grid": "grid.png",
    }
    write_json(out / "results.json", summary)
    make_grid(out, out / "grid.png")
    print(format_table(summary))
    print(f"wall time {wall:.0f} s on {torch.get_num_threads()} thread(s); grid: {out / 'grid.png'}")
    _report(out)
    return 0


def _load_models(classifier_name: str, diffusion_name: str):
    import freqpure

    classifier = freqpure.load_classifier(classifier_name)
    eps_model = freqpure.load_diffusion(diffusion_name)
    for m in (classifier, eps_model):
        m.eval().requires_grad_(False)
    return classifier, eps_model


def _report(out: Path) -> None:
    try:
        from freqpure.report import write_report
    except ImportError:
        return
    path = write_report(out)
    print(f"report: {path}")


def format_table(summary: dict[str, Any]) -> str:
    """The demo's accuracy table as aligned text."""
    rows = [f"{summary['attack']} (gradient: {summary['gradient']}), n = {summary['table'][0]['n']}",
            f"{'defence':<12} {'clean':>18} {'robust':>18}"]
    for r in summary["table"]:
        def cell(e):
            lo, hi = e["ci95"]
            return f"{100 * e['accuracy']:5.1f}% [{100 * lo:3.0f},{100 * hi:3.0f}]"

        rows.append(f"{r['title']:<12} {cell(r['clean']):>18} {cell(r['robust']):>18}")
    return "\n".join(rows)


def make_grid(out: Path, path: Path, rows: int = 8, scale: int = 3) -> Path:
    """A PNG: per sample, the clean image with its label, then per defence the adversarial image and (for
    purifiers) one purification of it, captioned with the defence's prediction (green: correct, red: wrong)."""
    import numpy as np
    from PIL import Image, ImageDraw

    ex = {m: np.load(out / m / "examples.npz") for m in DEFENCES if (out / m / "examples.npz").exists()}
    base = ex.get("none") or next(iter(ex.values()))
    names = [str(c) for c in base["class_names"]]
    k = min(rows, len(base["labels"]))
    columns = [("clean (label)", base["clean"], None)]
    for m, e in ex.items():
        columns.append((f"adv ({'none' if m == 'none' else TITLES[m]})", e["adversarial"], e["pred_adversarial"]))
        if m != "none":
            columns.append((f"{TITLES[m]}(adv)", e["purified"], e["pred_adversarial"]))
    size = base["clean"].shape[-1] * scale
    pad, caption, header = 4, 14, 16
    width = len(columns) * (size + pad) + pad
    height = header + k * (size + caption + pad) + pad
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for c, (title, images, preds) in enumerate(columns):
        x0 = pad + c * (size + pad)
        draw.text((x0, 2), title[: size // 6], fill="black")
        for r in range(k):
            y0 = header + r * (size + caption + pad)
            arr = (np.clip(images[r].transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
            img.paste(Image.fromarray(arr).resize((size, size), Image.NEAREST), (x0, y0))
            label = int(base["labels"][r])
            if preds is None:
                draw.text((x0, y0 + size + 1), names[label][: size // 6], fill="black")
                continue
            pred = int(preds[r])
            draw.text((x0, y0 + size + 1), names[pred][: size // 6], fill="green" if pred == label else "red")
    img.save(path)
    return path

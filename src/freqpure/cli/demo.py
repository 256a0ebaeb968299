"""freqpure demo: the README's first command (the pipeline is freqpure.evaluation.demo)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from freqpure.cli.common import add_config_args, add_runtime_args, apply_runtime_args, load_command_config
from freqpure.errors import UsageError
from freqpure.presets import PRESETS

_TABLE = PRESETS["bundled-table"].settings

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="attack the bundled classifier with and without DiffPure/FreqPure (PGD-EOT) and print the table",
        description="PGD-EOT (L-inf) against the bundled CIFAR-10 classifier, undefended and defended by DiffPure and "
                    "FreqPure with the bundled diffusion model, on real CIFAR-10 test images. Prints a time estimate "
                    "first, then the table; writes OUT/results.json, OUT/grid.png, OUT/report.html and one "
                    "evaluation run dir per defence. A re-run with the same settings reuses finished work.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)")
    p.add_argument("--n", type=int, help="test images, class-balanced (default: 32)")
    p.add_argument("--attack-steps", type=int, metavar="N", help="PGD iterations (default: 20)")
    p.add_argument("--steps", type=int, dest="old_steps", metavar="N", help=argparse.SUPPRESS)  # deprecated alias
    p.add_argument("--eot", type=int, help="EOT draws per gradient (default: 2)")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="purifications per image; the defence takes their majority vote (default: 3)")
    p.add_argument("--eps", help="L-inf radius, a number or a fraction (default: 8/255)")
    p.add_argument("--rounds", metavar="T:STEPS",
                   help=f"purification plan, noise level t* : denoising steps (default: {_TABLE['rounds']}, "
                        "preset bundled-table)")
    p.add_argument("--radius", type=float, metavar="R",
                   help=f"FreqPure amplitude and phase radius (r_a = r_p), frequency-index units (default: "
                        f"{_TABLE['amp_radius']:g}, preset bundled-table: the paper's CIFAR-10 radius, 2.8%% of a "
                        "32x32 spectrum)")
    p.add_argument("--gradient", choices=("full", "surrogate", "bpda"),
                   help="gradient through the purifier: full (exact, through every step), surrogate or bpda "
                        "(default: full)")
    p.add_argument("--surrogate-rounds", help="surrogate plan for --gradient surrogate (default: t*:1)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: 8)")
    p.add_argument("--sweep", action="store_true", default=None, help="also run the eps-sweep sanity check (slower)")
    p.add_argument("--classifier", metavar="NAME|PATH",
                   help="classifier name or weights file (default: the bundled cifar10-resnet-small)")
    p.add_argument("--diffusion", metavar="NAME|PATH",
                   help="diffusion model name or weights file (default: the bundled cifar10-ddpm-small)")
    p.add_argument("--data-dir", metavar="DIR", help="CIFAR-10 folder (default: $FREQPURE_DATA, then the usual places)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: delete the demo's run dirs in --out first (by default a re-run with the same "
                        "settings reuses finished work and a killed demo continues where it stopped)")
    p.add_argument("--no-estimate", action="store_true", help="skip the up-front time estimate (a 1-batch timing)")
    add_config_args(p, "demo", example="--set attack_steps=10 --set ensemble=1")
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure.cli.common import resolve_device
    from freqpure.evaluation.demo import DemoSettings, run_demo
    from freqpure.evaluation.lock import locked_folder
    from freqpure.report import write_report

    apply_runtime_args(args)
    if args.old_steps is not None:
        if args.attack_steps is not None:
            raise UsageError("--steps is the deprecated spelling of --attack-steps; give --attack-steps only")
        print("note: demo --steps is deprecated (purify's --steps meant denoising steps); use --attack-steps",
              file=sys.stderr)
        args.attack_steps = args.old_steps
    flags = {k: getattr(args, k) for k in ("n", "attack_steps", "eot", "ensemble", "eps", "rounds", "radius",
                                           "gradient", "surrogate_rounds", "batch_size", "sweep", "seed",
                                           "classifier", "diffusion", "data_dir")}
    settings = load_command_config(DemoSettings, args, flags)
    _check_out(args.out, overwrite=args.overwrite)
    with locked_folder(args.out):  # a second demo into the same folder is refused
        run_demo(settings, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                 estimate=not args.no_estimate, device=resolve_device(args.device))
        print(f"report: {write_report(args.out)}")
    return 0


def _check_out(out: Path, *, overwrite: bool = False) -> None:
    """``--out`` must be a folder, and its ``results.json`` (if any) an earlier demo's: never another run's.
    ``overwrite`` deletes the demo's run folders: each must be an evaluation run (it has a ``config.yaml``)."""
    import json

    from freqpure.errors import OutputExistsError
    from freqpure.evaluation.demo import DEFENCES, DemoSummary

    for method in DEFENCES if overwrite else ():
        folder = out / method
        if folder.exists() and not (folder / "config.yaml").is_file():
            raise OutputExistsError(f"--overwrite would delete {folder}, which is not a demo's run folder (no "
                                    "config.yaml); move it away or give another --out")

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a folder; give a new folder")
    summary = out / "results.json"
    if summary.exists():
        try:
            DemoSummary.from_dict(json.loads(summary.read_text(encoding="utf-8")), str(summary))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise OutputExistsError(f"--out {out} holds a results.json that is not a demo's (another run's, or "
                                    "damaged); the demo would replace it: give a new folder") from None

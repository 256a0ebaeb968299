"""freqpure train: train the bundled CIFAR-10 models (resumable), export and summarise runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from freqpure.errors import UsageError
from freqpure.presets import SAMPLERS

__all__ = ["register"]

DESCRIPTION = """Train the bundled CIFAR-10 models and manage their runs. Sub-commands:
  diffusion    train a DDPM eps-model (EMA weights are exported every export_every steps)
  classifier   train the fast CIFAR-10 classifier (optionally purifier-aware)
  purify-data  write DiffPure-purified copies of a CIFAR-10 split (for purifier-aware fine-tuning)
  export       export a run's latest checkpoint to a .safetensors weights file
  summary      print a run's key numbers (and optionally plot its curves)

Settings come from the defaults, then --config FILE (see configs/train_*.yaml), then --set KEY=VALUE,
then the explicit flags; a key given both by --set and by its own flag is an error. Runs are resumable:
re-running the same command with the same --out continues from OUT/checkpoint.pt on the same
trajectory (Ctrl-C / SIGTERM write a checkpoint before exiting)."""

EPILOG = """examples:
  freqpure train diffusion --config configs/train_diffusion_pure.yaml --out work/train/cifar10-ddpm-pure --threads 1
  freqpure train classifier --config configs/train_classifier_small.yaml --set epochs=30 --out work/train/cls
  freqpure train export work/train/cifar10-ddpm-pure src/freqpure/weights/cifar10-ddpm-pure.safetensors
  freqpure train summary work/train/cifar10-ddpm-pure --plot curve.png"""


def _training_args(p: argparse.ArgumentParser, default_out: str, what: str) -> None:
    from freqpure.cli.common import add_config_args, add_runtime_args

    add_config_args(p, what, example="--set batch_size=128 --set seed=1")
    p.add_argument("--out", default=default_out, metavar="DIR",
                   help=f"run directory: checkpoint.pt, config.json, metrics.jsonl, export/ (default: {default_out})")
    add_runtime_args(p)
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR",
                   help="CIFAR-10 folder (default: $FREQPURE_DATA, else a search next to the repository)")
    p.add_argument("--batch-size", dest="batch_size", type=int, metavar="N", help="images per optimiser step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    _precision_args(p)
    p.add_argument("--export-to", dest="export_to", metavar="FILE",
                   help="also write the exported weights here (an existing file only if it is freqpure weights)")
    p.add_argument("--force", action="store_true", help="let --export-to replace a file that is not freqpure weights")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", default=None, help="require a checkpoint in --out to resume")
    g.add_argument("--no-resume", dest="resume", action="store_false", help="refuse to resume (a fresh run only)")


def _precision_args(p: argparse.ArgumentParser) -> None:
    """``--precision bf16|fp32`` and its deprecated spelling ``--amp bf16|none``."""
    from freqpure.training.config import AMP_CHOICES, PRECISION_CHOICES

    p.add_argument("--precision", choices=PRECISION_CHOICES,
                   help="arithmetic of the network: bf16 (autocast) or fp32 (default: the config's, else bf16)")
    p.add_argument("--amp", choices=AMP_CHOICES, help="deprecated spelling of --precision (none = fp32)")


def _precision_flags(args: argparse.Namespace) -> dict[str, str | None]:
    """The flags ``--precision``/``--amp`` as settings (one of them at most)."""
    if args.amp is not None and args.precision is not None:
        raise UsageError("--amp is the old spelling of --precision; give --precision only")
    return {"precision": args.precision, "amp": args.amp}


_FLAGS = ("data_dir", "batch_size", "lr", "seed", "steps", "export_every", "ema_decay", "epochs")


def _config(cls: type, args: argparse.Namespace) -> Any:
    from freqpure._fileio import check_output_file
    from freqpure.cli.common import apply_runtime_args, load_command_config

    apply_runtime_args(args)
    cfg = load_command_config(cls, args, {**{k: getattr(args, k, None) for k in _FLAGS}, **_precision_flags(args)})
    if args.export_to:  # before the work: never a run's file, another file only with --force
        check_output_file(args.export_to, "--export-to", force=args.force, inputs=[args.out],
                          replaceable=_is_weights_file)
    return cfg


def _is_weights_file(path: Path) -> bool:
    """Whether ``path`` is a freqpure weights file (an earlier export, which a new export may replace)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return "freqpure_kind" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - any file safetensors cannot open is not one
        return False


def _device(args: argparse.Namespace) -> str:
    from freqpure.cli.common import resolve_device

    return str(resolve_device(args.device))


def _run_diffusion(args: argparse.Namespace) -> int:
    from freqpure.evaluation.lock import locked_folder
    from freqpure.training import DiffusionTrainConfig, train_diffusion

    cfg = _config(DiffusionTrainConfig, args)
    with locked_folder(args.out):  # a second training into the same run folder is refused
        snap = train_diffusion(cfg, args.out, device=_device(args), resume=args.resume, export_to=args.export_to,
                               progress=not args.no_progress)
    print(f"diffusion: stopped at step {snap['step']}; checkpoint in {Path(args.out) / 'checkpoint.pt'}")
    return 0


def _run_classifier(args: argparse.Namespace) -> int:
    from freqpure.evaluation.lock import locked_folder
    from freqpure.training import ClassifierTrainConfig, train_classifier

    cfg = _config(ClassifierTrainConfig, args)
    with locked_folder(args.out):  # a second training into the same run folder is refused
        snap = train_classifier(cfg, args.out, device=_device(args), resume=args.resume, export_to=args.export_to,
                                progress=not args.no_progress)
    print(f"classifier: stopped at step {snap['step']}; checkpoint in {Path(args.out) / 'checkpoint.pt'}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from freqpure._fileio import check_output_file
    from freqpure.training import export_run

    check_output_file(args.out, "OUT", force=args.force, inputs=[args.run_dir])  # before the work
    out = export_run(args.run_dir, args.out)
    print(f"exported {args.run_dir} -> {out}")
    return 0


def _run_purify_data(args: argparse.Namespace) -> int:
    from freqpure.cli.common import apply_runtime_args, load_command_config
    from freqpure.purified_data import PurifySplitConfig, purify_split

    apply_runtime_args(args)
    if args.amp is not None and args.precision is not None:
        raise UsageError("--amp is the old spelling of --precision; give --precision only")
    # the flat flags read as purifier settings (PurifySplitConfig.ALIASES): --t-star/--steps are the plan T:S
    flags = {k: getattr(args, k) for k in ("split", "diffusion", "t_star", "steps", "sampler", "seed", "precision",
                                           "amp")}
    cfg = load_command_config(PurifySplitConfig, args, flags)
    out = purify_split(cfg, args.out, data_dir=args.data_dir, limit=args.limit, progress=not args.no_progress,
                       force=args.force)
    print(f"purified {cfg.split} split -> {out}")
    return 0


def _run_summary(args: argparse.Namespace) -> int:
    import json

    from freqpure.training import plot_run, summarize_run

    print(json.dumps(summarize_run(args.run_dir), indent=1))
    if args.plot:
        print(f"plot: {plot_run(args.run_dir, args.plot)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add freqpure train with its diffusion, classifier, purify-data, export and summary sub-commands."""
    from freqpure.cli.common import add_config_args, add_runtime_args

    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("train", help="train the bundled CIFAR-10 models (resumable), export and summarise runs",
                              description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    sub = p.add_subparsers(dest="train_command", title="sub-commands", required=True,
                           metavar="{diffusion,classifier,purify-data,export,summary}")

    d = sub.add_parser("diffusion", help="train a DDPM eps-model (EMA weights are exported)",
                       description="Train (or resume) a DDPM eps-model on the CIFAR-10 train split. Settings: the "
                                   "fields of DiffusionTrainConfig (configs/train_diffusion_*.yaml).")
    _training_args(d, "work/train/cifar10-ddpm-small", "diffusion training")
    d.add_argument("--steps", type=int, metavar="N", help="total optimiser steps (default: the config's)")
    d.add_argument("--export-every", dest="export_every", type=int, metavar="N",
                   help="export the EMA weights every N steps (0: only at the end)")
    d.add_argument("--ema-decay", dest="ema_decay", type=float, help="EMA decay per step")
    d.set_defaults(func=_run_diffusion)

    c = sub.add_parser("classifier", help="train the fast CIFAR-10 classifier (optionally purifier-aware)",
                       description="Train (or resume) the fast CIFAR-10 classifier. Settings: the fields of "
                                   "ClassifierTrainConfig (configs/train_classifier_*.yaml).")
    _training_args(c, "work/train/cifar10-resnet-small", "classifier training")
    c.add_argument("--epochs", type=int, metavar="N", help="training epochs (sets the LR schedule)")
    c.set_defaults(func=_run_classifier)

    q = sub.add_parser("purify-data", help="write DiffPure-purified copies of a CIFAR-10 split",
                       description="Purify every image of a CIFAR-10 split (default: DiffPure 100:5, DDPM chain) "
                                   "and store the copies for purifier-aware classifier fine-tuning. Settings: the "
                                   "fields of PurifySplitConfig (split, purifier: a purifier's settings as in "
                                   "evaluate, seed, chunk); the flat keys diffusion, sampler, t_star, steps and amp "
                                   "of older configs still read.")
    q.add_argument("out", help="output .safetensors file (resumes from OUT.partial)")
    add_config_args(q, "purify-data", example="--set purifier.rounds=100:5 --set chunk=256")
    q.add_argument("--split", choices=["train", "test"], help="which split (default: train)")
    q.add_argument("--diffusion", metavar="NAME|PATH",
                   help="bundled diffusion model or .safetensors path (default: cifar10-ddpm-small)")
    q.add_argument("--t-star", dest="t_star", type=int, metavar="T",
                   help="noise level t* of a one-round plan (default: 100; with --steps: purifier.rounds T:STEPS)")
    q.add_argument("--steps", type=int, metavar="N", help="reverse steps of a one-round plan (default: 5)")
    q.add_argument("--sampler", choices=SAMPLERS, help="reverse sampler (default: ddpm)")
    q.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="arithmetic of the eps-model: bf16 (CPU autocast), fp32 or auto (default: bf16)")
    q.add_argument("--amp", choices=["bf16", "none"], help="deprecated spelling of --precision (none = fp32)")
    q.add_argument("--limit", type=int, metavar="N", help="only the first N images (tests)")
    q.add_argument("--force", action="store_true", help="replace an existing OUT file")
    q.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="CIFAR-10 folder")
    add_runtime_args(q, device=False)
    q.set_defaults(func=_run_purify_data)

    e = sub.add_parser("export", help="export a run's latest checkpoint to a .safetensors weights file",
                       description="Export the latest checkpoint of a run (diffusion: the EMA weights) to a "
                                   "weights file with its construction recipe, step range and quality in the metadata.")
    e.add_argument("run_dir", help="run directory holding checkpoint.pt")
    e.add_argument("out", help="output .safetensors path, e.g. src/freqpure/weights/cifar10-ddpm-small.safetensors")
    e.add_argument("--force", action="store_true", help="replace an existing OUT file")
    e.set_defaults(func=_run_export)

    s = sub.add_parser("summary", help="print a run's key numbers (and optionally plot its curves)",
                       description="Print a run's step, training hours, recent loss and evaluations from its "
                                   "metrics.jsonl.")
    s.add_argument("run_dir", help="run directory holding metrics.jsonl")
    s.add_argument("--plot", metavar="PNG", help="write a small PNG of the loss / accuracy curves here")
    s.set_defaults(func=_run_summary)

"""``freqpure train {diffusion,classifier,export}``: train the bundled CIFAR-10 models.

Runs are resumable: re-running the same command with the same ``--out`` continues from
``<out>/checkpoint.pt`` (Ctrl-C / SIGTERM write a checkpoint before exiting).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from freqpure.errors import UsageError

__all__ = ["register"]


def _load_config(cls: type, path: str | None, overrides: dict[str, Any]) -> Any:
    from freqpure.training import config_from_dict

    values: dict[str, Any] = {}
    if path:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise UsageError(f"{path}: expected a mapping of config keys")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(cls, values)


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--config", help="YAML file with config keys (flags override it)")
    p.add_argument("--out", default=default_out, help="run directory (checkpoint, metrics.jsonl, export/)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-dir", dest="data_dir", help="CIFAR-10 folder (default: $FREQPURE_DATA or search)")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--amp", choices=["bf16", "none"])
    p.add_argument("--export-to", dest="export_to", help="also write the exported weights to this file")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm bar")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", default=None, help="require a checkpoint to resume")
    g.add_argument("--no-resume", dest="resume", action="store_false", help="refuse to resume")


def _overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def _setup(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda given but CUDA is not available")


def _run_diffusion(args: argparse.Namespace) -> int:
    from freqpure.training import DiffusionTrainConfig, train_diffusion

    _setup(args)
    cfg = _load_config(DiffusionTrainConfig, args.config, _overrides(args, DiffusionTrainConfig))
    snap = train_diffusion(
        cfg, args.out, device=args.device, resume=args.resume, export_to=args.export_to, progress=not args.no_progress
    )
    print(f"diffusion: stopped at step {snap['step']}; checkpoint in {Path(args.out) / 'checkpoint.pt'}")
    return 0


def _run_classifier(args: argparse.Namespace) -> int:
    from freqpure.training import ClassifierTrainConfig, train_classifier

    _setup(args)
    cfg = _load_config(ClassifierTrainConfig, args.config, _overrides(args, ClassifierTrainConfig))
    snap = train_classifier(
        cfg, args.out, device=args.device, resume=args.resume, export_to=args.export_to, progress=not args.no_progress
    )
    print(f"classifier: stopped at step {snap['step']}; checkpoint in {Path(args.out) / 'checkpoint.pt'}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from freqpure.training import export_run

    out = export_run(args.run_dir, args.out)
    print(f"exported {args.run_dir} -> {out}")
    return 0


def _run_purify_data(args: argparse.Namespace) -> int:
    from freqpure.purified_data import PurifySplitConfig, purify_split

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = PurifySplitConfig(
        split=args.split,
        diffusion=args.diffusion,
        t_star=args.t_star,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        amp=args.amp,
    )
    out = purify_split(cfg, args.out, data_dir=args.data_dir, limit=args.limit, progress=not args.no_progress)
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
    """Add ``freqpure train`` with its ``diffusion``, ``classifier`` and ``export`` sub-commands."""
    p = subparsers.add_parser(
        "train",
        help="train the bundled CIFAR-10 models (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="train_command", metavar="WHAT", required=True)

    d = sub.add_parser("diffusion", help="train the small DDPM ε-model (EMA weights are exported)")
    _common(d, "work/train/cifar10-ddpm-small")
    d.add_argument("--steps", type=int, help="total optimiser steps (default: until stopped)")
    d.add_argument("--export-every", dest="export_every", type=int, help="export EMA weights every N steps")
    d.add_argument("--ema-decay", dest="ema_decay", type=float)
    d.set_defaults(func=_run_diffusion)

    c = sub.add_parser("classifier", help="train the fast CIFAR-10 classifier")
    _common(c, "work/train/cifar10-resnet-small")
    c.add_argument("--epochs", type=int)
    c.set_defaults(func=_run_classifier)

    e = sub.add_parser("export", help="export a run's latest checkpoint to a safetensors file")
    e.add_argument("run_dir", help="run directory holding checkpoint.pt")
    e.add_argument("out", help="output .safetensors path (e.g. src/freqpure/weights/cifar10-ddpm-small.safetensors)")
    e.set_defaults(func=_run_export)

    q = sub.add_parser(
        "purify-data",
        help="write DiffPure-purified copies of a CIFAR-10 split (for purifier-aware classifier fine-tuning)",
    )
    q.add_argument("out", help="output .safetensors file (resumes from <out>.partial)")
    q.add_argument("--split", default="train", choices=["train", "test"])
    q.add_argument("--diffusion", default="cifar10-ddpm-small", help="bundled diffusion model or .safetensors path")
    q.add_argument("--t-star", dest="t_star", type=int, default=100)
    q.add_argument("--steps", type=int, default=5)
    q.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim", "sde"])
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    q.add_argument("--limit", type=int, help="only the first N images (tests)")
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--data-dir", dest="data_dir")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=_run_purify_data)

    s = sub.add_parser("summary", help="print a run's key numbers (and optionally plot its curves)")
    s.add_argument("run_dir", help="run directory holding metrics.jsonl")
    s.add_argument("--plot", help="write a small PNG of the loss / accuracy curves here")
    s.set_defaults(func=_run_summary)

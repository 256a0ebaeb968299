"""``freqpure purify INPUT... --out DIR``: purify PNG/JPEG files and folders."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from freqpure.cli.common import add_dataclass_flags, add_precision_arg, dataclass_overrides, resolve_device
from freqpure.config import PurifierConfig, build_purifier, from_dict, load_yaml, to_dict, with_resolved_precision
from freqpure.errors import UsageError
from freqpure.imageio import collect_images, read_images, write_png
from freqpure.provenance import environment, write_json_atomic

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "purify",
        help="purify image files with FreqPure or DiffPure",
        description="Purify PNG/JPEG files (folders are searched recursively); writes PNGs and manifest.json.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--config", type=Path, help="YAML file with purifier settings (flags override it)")
    p.add_argument("--model", dest="diffusion", help="diffusion model: a registered name or a checkpoint path")
    p.add_argument("--t-start", type=int, help="single-round noise level t* in steps (with --steps)")
    p.add_argument("--steps", type=int, help="single-round denoising steps (with --t-start)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: $FREQPURE_THREADS, else the project's thread policy)")
    add_precision_arg(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resize", action="store_true", help="resize inputs to the model's image size")
    p.add_argument("--clamp", action="store_true", help="clip out-of-range inputs instead of refusing them")
    add_dataclass_flags(p, PurifierConfig, exclude=("diffusion", "precision"), help_prefix="purifier settings")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> PurifierConfig:
    base = to_dict(load_yaml(PurifierConfig, args.config)) if args.config else to_dict(PurifierConfig())
    base.update(dataclass_overrides(args, PurifierConfig))
    if (args.t_start is None) != (args.steps is None):
        raise UsageError("--t-start and --steps go together (or use --rounds T:STEPS,...)")
    if args.t_start is not None:
        base["rounds"] = f"{args.t_start}:{args.steps}"
    cfg = from_dict(PurifierConfig, base, "purifier")
    if cfg.method == "none":
        raise UsageError("--method must be freqpure or diffpure for purify")
    return cfg


def run(args: argparse.Namespace) -> int:
    from freqpure.runtime import configure_threads

    configure_threads(args.threads)
    cfg = _settings(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    cfg = with_resolved_precision(cfg, device)  # the manifest records fp32 or bf16
    files = collect_images(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)

    from freqpure.models.registry import load_diffusion

    eps_model = load_diffusion(cfg.diffusion, device=device)
    purifier = build_purifier(cfg, eps_model, seed=args.seed).to(device)
    purifier.clamp_input = args.clamp
    size = getattr(eps_model, "image_size", None) if args.resize else None

    started = time.perf_counter()
    records = []
    with torch.no_grad():
        for start in tqdm(range(0, len(files), args.batch_size), desc="purify", unit="batch"):
            chunk = files[start : start + args.batch_size]
            images = read_images([path for path, _ in chunk], size=size).to(device)
            want = getattr(eps_model, "image_size", None)
            if want is not None and tuple(images.shape[-2:]) != (want, want):
                raise UsageError(
                    f"{chunk[0][0]} is {images.shape[-2]}x{images.shape[-1]} but model {cfg.diffusion!r} takes "
                    f"{want}x{want} images; pass --resize to resize inputs"
                )
            t0 = time.perf_counter()
            purified = purifier(images)
            elapsed = time.perf_counter() - t0
            for (src, name), image in zip(chunk, purified):
                write_png(image, args.out / name)
                records.append({"input": str(src), "output": str(name)})
            records[-1]["batch_seconds"] = round(elapsed, 4)
    total = time.perf_counter() - started

    manifest = {
        "command": "purify",
        "settings": to_dict(cfg),
        "seed": args.seed,
        "model": cfg.diffusion,
        "resize": args.resize,
        "clamp": args.clamp,
        "n_images": len(files),
        "timings": {"total_seconds": round(total, 3), "seconds_per_image": round(total / len(files), 4)},
        "environment": environment(device),
        "files": records,
    }
    write_json_atomic(manifest, args.out / "manifest.json")
    print(f"purified {len(files)} image(s) with {cfg.method} into {args.out} ({total:.1f} s)")
    return 0



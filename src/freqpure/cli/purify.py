"""``freqpure purify INPUT... --out DIR``: purify PNG/JPEG files and folders.

Safety rules (see docs/reliability.md): ``--out`` must be a new or empty folder, and never the folder
holding an input, an input folder, or a folder inside an input folder that would be overwritten; no
output path may be an input file. Everything is checked before anything is written, and a command
that fails after that removes what it wrote (no empty or half-filled output folder is left behind).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from freqpure._fileio import write_json_atomic
from freqpure.cli.common import (
    add_config_args,
    add_dataclass_flags,
    add_precision_arg,
    add_runtime_args,
    apply_runtime_args,
    dataclass_overrides,
    parse_optional_float,
    resolve_device,
)
from freqpure.config.io import from_dict, load_settings, parse_yaml, read_config_text, to_dict
from freqpure.config.purifier import PurifierConfig, preset, with_resolved_precision
from freqpure.errors import OutputExistsError, UsageError
from freqpure.evaluation.lock import LOCK_NAME, RunLock
from freqpure.imageio import ImageInfo, collect_images, inspect_image, load_image, resize_square, write_png
from freqpure.presets import DEFAULTS, PRESETS
from freqpure.provenance import environment

__all__ = ["register", "run", "load_purifier_settings", "check_output_folder"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "purify",
        help="purify image files with FreqPure or DiffPure",
        description="Purify PNG/JPEG files (folders are searched recursively); writes PNGs and manifest.json "
                    "into a new or empty --out folder. Greyscale, 16-bit, transparent or differently sized "
                    "images are refused unless --convert / --resize ask for the conversion, which is then "
                    "recorded per file in manifest.json.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output folder: must be new or empty, and not the folder of an input")
    add_config_args(p, "purifier", example="--set rounds=100:5 --set delta=0.5")
    p.add_argument("--diffusion", "--model", dest="diffusion", metavar="NAME|PATH",
                   help="diffusion model: a registered name or a checkpoint path (--model is a deprecated alias)")
    p.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                   help="start from a named purifier setting (" + "; ".join(
                       f"{p.name}: {p.description}" for p in PRESETS.values())
                   + "); --config, --set and the flags below change it (default: default)")
    p.add_argument("--t-star", dest="t_star", type=int, metavar="T", help="noise level t* (diffusion steps) of a "
                   "one-round plan; with --steps it is --rounds T:STEPS")
    p.add_argument("--t-start", dest="t_star", type=int, help=argparse.SUPPRESS)  # deprecated spelling of --t-star
    p.add_argument("--steps", type=int, metavar="N", help="denoising steps of a one-round plan (with --t-star); "
                   "not PGD steps, which only evaluate, demo (--attack-steps) and analyze have")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per purifier call (default 64)")
    p.add_argument("--resize", action="store_true",
                   help="resize inputs to the model's image size (recorded per file; outputs stay at that size)")
    p.add_argument("--convert", action="store_true",
                   help="convert greyscale, 16-bit, palette and transparent images to RGB (recorded per file); "
                        "without it they are refused")
    p.add_argument("--clamp", action="store_true", help="clip out-of-range inputs instead of refusing them")
    add_runtime_args(p)
    add_precision_arg(p)
    add_dataclass_flags(p, PurifierConfig, exclude=("diffusion", "precision"), help_prefix="purifier settings")
    p.add_argument_group("purifier settings").add_argument(
        "--radius", type=parse_optional_float, metavar="R",
        help="amplitude and phase radius at once (= --amp-radius R --phase-radius R)")
    for action in p._actions:
        if action.dest in _FLAG_HELP:
            action.help = _FLAG_HELP[action.dest].replace("%", "%%")
    p.set_defaults(func=run)


_AS_VARIANT = "(default: as --variant says)"
_FLAG_HELP = {
    "method": "freqpure or diffpure (default: freqpure)",
    "rounds": f"purification plan T:STEPS[*REPEAT],..., noise level t* : denoising steps per round, e.g. 100:5 or "
              f"20:5*5,50:5*5 (default: {DEFAULTS['rounds']})",
    "sampler": f"ddpm (ancestral), ddim (deterministic) or sde (VP-SDE Euler-Maruyama, DiffPure's) "
               f"(default: {DEFAULTS['sampler']})",
    "amp_radius": f"FreqPure amplitude-exchange radius r_a in frequency-index units of the centred spectrum; none "
                  f"disables (default: {DEFAULTS['amp_radius']:g})",
    "phase_radius": f"FreqPure phase-projection radius r_p, frequency-index units; none disables "
                    f"(default: {DEFAULTS['phase_radius']:g})",
    "delta": f"FreqPure phase half-width in radians (default: {DEFAULTS['delta']:g})",
    "variant": "paper (the method as the paper states it) or official (the official code's arithmetic): fills "
               "--mode, --reference, --step-rule, --grid and --variance when they are not given (default: paper)",
    "mode": f"exchange arithmetic: paper (phase projected on the circle, real part) or official (the official "
            f"code's: replace-then-clip phase, magnitude of the inverse FFT; 'reference' is its old name) "
            f"{_AS_VARIANT}",
    "step_rule": f"after the edit: posterior (eps re-derived from the edited x0) or official (the model's eps "
                 f"kept) {_AS_VARIANT}",
    "grid": f"step indices of a round: respaced (t*-1 ... 0) or official (t*/n-1, ..., t*-1; n must divide t*) "
            f"{_AS_VARIANT}",
    "variance": f"learned (a model's learned-variance channels) or fixed (posterior variance) {_AS_VARIANT}",
    "reference": f"FreqPure's reference image: input (the image being purified), denoised (the round's input "
                 f"noised to --reference-t and denoised once per round) or round-denoised (redrawn at every step) "
                 f"{_AS_VARIANT}",
    "reference_t": f"step index the denoised references are noised to (default: {DEFAULTS['reference_t']})",
    "recompute_reference": "with --reference denoised, redraw the reference at every step (= round-denoised) "
                           "(default: off)",
    "clip_x0": "clamp every x0 estimate to [-1, 1], guided-diffusion's clip_denoised (default: off)",
}


# ----------------------------------------------------------------------------------------------- settings
_ACCEPTS = ("a purifier-settings YAML (keys: " + ", ".join(PurifierConfig.__dataclass_fields__)
            + ") or an evaluate config with a purifier: section")


def load_purifier_settings(path: Path) -> tuple[PurifierConfig, str]:
    """A purifier config from ``path``: a purifier-settings file or the ``purifier:`` section of an evaluate config.

    Returns the config and which of the two it was (for the manifest).
    """
    data = parse_yaml(read_config_text(path, "--config file"), f"--config file {path}") or {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a mapping; purify --config takes {_ACCEPTS}")
    where, kind = "purifier", "purifier settings"
    eval_keys = {"name", "seed", "batch_size", "device", "data", "classifier", "defence", "attacks", "sanity"}
    if "purifier" not in data and set(data) & (eval_keys - {"seed", "device"}) and not set(data) & set(
            PurifierConfig.__dataclass_fields__):
        raise UsageError(f"--config {path} has no purifier settings (it looks like an evaluate or training config "
                         f"without a purifier: section); purify --config takes {_ACCEPTS}")
    if "purifier" in data:
        section = data["purifier"]
        if not isinstance(section, dict):
            raise UsageError(f"--config {path}: the purifier: section must be a mapping, got {section!r}")
        data, where, kind = section, "purifier", "purifier: section of an evaluate config"
    try:
        return from_dict(PurifierConfig, data, where), kind
    except UsageError as err:
        if "unknown config key" in str(err):
            head = str(err).split(". Valid keys of")[0]
            raise UsageError(f"--config {path}: {head}. purify --config takes {_ACCEPTS}") from None
        raise UsageError(f"--config {path}: {err}") from None


def _settings(args: argparse.Namespace) -> tuple[PurifierConfig, str | None]:
    if args.preset and args.config:
        raise UsageError("--preset and --config both give the starting settings; give one of them (and change "
                         "single keys with --set or their flags)")
    if args.config:
        cfg, kind = load_purifier_settings(args.config)
    else:
        cfg, kind = preset(args.preset or "default"), None if args.preset is None else f"preset {args.preset}"
    overrides = list(args.overrides or [])
    set_keys = {item.partition("=")[0].strip() for item in overrides}
    flags: dict[str, Any] = dataclass_overrides(args, PurifierConfig)
    if args.diffusion is not None:
        flags["diffusion"] = args.diffusion
    if args.radius is not None:
        both = sorted({"amp_radius", "phase_radius"} & set(flags))
        if both:
            raise UsageError(f"--radius sets both radii; give it or --{both[0].replace('_', '-')}, not both")
        flags["amp_radius"] = flags["phase_radius"] = args.radius
    if args.t_star is not None or args.steps is not None:
        if "rounds" in flags or "rounds" in set_keys:
            raise UsageError("--t-star/--steps and --rounds both set the purification plan; give --rounds T:STEPS "
                             "only")
        if args.t_star is None or args.steps is None:
            given, missing = ("--t-star", "--steps") if args.steps is None else ("--steps", "--t-star")
            raise UsageError(f"{given} needs {missing} too: --t-star T --steps N is the plan T:N (or give "
                             "--rounds T:N)")
        flags["rounds"] = f"{args.t_star}:{args.steps}"
    cfg = load_settings(PurifierConfig, None, overrides, flags, start=cfg, where="purifier")
    if cfg.method == "none":
        raise UsageError("--method must be freqpure or diffpure for purify")
    return cfg, kind


# ----------------------------------------------------------------------------------------------- output rules
def check_output_folder(out: Path, files: list[tuple[Path, Path]], inputs: list[str]) -> None:
    """Refuse an ``--out`` that could overwrite or mix with anything that is not this run's output."""
    target = out.resolve()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder; give a new or empty folder")
    input_dirs = {Path(raw).resolve() for raw in inputs if Path(raw).is_dir()}
    parents = {src.resolve().parent for src, _ in files}
    for folder in sorted(input_dirs | parents):
        if target == folder:
            raise OutputExistsError(f"--out {out} is the folder of the input images; purify never writes into an "
                                    "input's folder — give a new folder")
    sources = {src.resolve() for src, _ in files}
    for _, name in files:
        if (target / name).resolve() in sources:
            raise OutputExistsError(f"--out {out}: output {name} would overwrite an input file")
    _check_empty(out)


def _check_empty(out: Path) -> None:
    """Refuse an ``--out`` folder that holds anything but a run lock."""
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise OutputExistsError(f"--out {out} is not empty; purify writes only into a new or empty folder "
                                "(it never replaces files it did not write in this run)")


class _Written:
    """What this command created, so that a failure can remove exactly that (and nothing else)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.created_dirs: list[Path] = []
        self.files: list[Path] = []

    def make_dir(self, folder: Path) -> None:
        missing = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        folder.mkdir(parents=True, exist_ok=True)
        self.created_dirs += list(reversed(missing))

    def remove(self) -> None:
        for f in reversed(self.files):
            f.unlink(missing_ok=True)
        for d in reversed(self.created_dirs):
            try:
                d.rmdir()  # only if empty: never remove anything this run did not write
            except OSError:
                pass


def _probe_writable(out: Path) -> None:
    probe = out / f".freqpure-write-test-{time.time_ns()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OSError(err.errno, f"--out folder is not writable ({err.strerror})", str(out)) from None


# ----------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    cfg, config_kind = _settings(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    apply_runtime_args(args)
    seed = 0 if args.seed is None else args.seed
    device = resolve_device(args.device)
    cfg = with_resolved_precision(cfg, device)  # the manifest records fp32 or bf16
    files = collect_images(args.inputs)
    infos = [inspect_image(src) for src, _ in files]  # headers only: formats, animations, sizes, modes
    if not args.convert:
        for info in infos:
            if info.conversions():
                raise UsageError(f"{info.path} needs a conversion ({'; '.join(info.conversions())}); pass --convert "
                                 "to convert it (recorded in manifest.json), or convert it yourself")
    check_output_folder(args.out, files, args.inputs)

    written = _Written(args.out)
    lock = None
    try:
        written.make_dir(args.out)
        lock = _claim(args.out)
        _probe_writable(args.out)
        _purify(args, cfg, config_kind, seed, device, files, infos, written)
    except BaseException:
        _unclaim(lock)
        written.remove()
        raise
    _unclaim(lock)
    return 0


def _claim(out: Path) -> RunLock:
    """Lock ``out`` for this run (a second purify into it is refused) and check, under the lock, that it is
    still empty: another run may have filled it between the first check and the lock."""
    lock = RunLock(out).acquire()
    try:
        _check_empty(out)
    except BaseException:
        lock.release()
        raise
    return lock


def _unclaim(lock: RunLock | None) -> None:
    """Remove the lock file while still holding it, then release (a run that opened it meanwhile is refused)."""
    if lock is not None and lock.held:
        lock.path.unlink(missing_ok=True)
        lock.release()


def _check_sizes(infos: list[ImageInfo], want: int | None, model: str, resize: bool) -> None:
    if resize:
        return
    if want is not None:
        for info in infos:
            if (info.height, info.width) != (want, want):
                raise UsageError(f"{info.path} is {info.height}x{info.width} but model {model!r} takes {want}x{want} "
                                 "images; pass --resize to resize inputs (recorded per file)")
        return
    sizes = {(i.height, i.width) for i in infos}
    if len(sizes) > 1:
        first = {}
        for i in infos:
            first.setdefault((i.height, i.width), i.path)
        listed = ", ".join(f"{p} is {h}x{w}" for (h, w), p in list(first.items())[:3])
        raise UsageError(f"the inputs differ in size ({listed}); pass --resize or give images of one size")


def _purify(args: argparse.Namespace, cfg: PurifierConfig, config_kind: str | None, seed: int,
            device: torch.device, files: list[tuple[Path, Path]], infos: list[ImageInfo], written: _Written) -> None:
    from freqpure.config.purifier import build_purifier
    from freqpure.models.registry import load_diffusion

    eps_model = load_diffusion(cfg.diffusion, device=device)
    want = getattr(eps_model, "image_size", None)
    _check_sizes(infos, want, cfg.diffusion, args.resize)
    purifier = build_purifier(cfg, eps_model, seed=seed).to(device)
    purifier.clamp_input = args.clamp

    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    with torch.no_grad():
        for b, start in enumerate(tqdm(range(0, len(files), args.batch_size), desc="purify", unit="batch",
                                       disable=args.no_progress)):
            chunk = files[start: start + args.batch_size]
            loaded = [load_image(src, convert=args.convert) for src, _ in chunk]
            images = []
            for item in loaded:
                img = item.image
                if args.resize and want is not None and tuple(img.shape[-2:]) != (want, want):
                    item.conversions.append(f"resized from {img.shape[-2]}x{img.shape[-1]} to {want}x{want}")
                    img = resize_square(img, want)
                images.append(img)
            batch = torch.stack(images).to(device)
            t0 = time.perf_counter()
            purified = purifier(batch)
            elapsed = time.perf_counter() - t0
            for (src, name), item, image in zip(chunk, loaded, purified):
                dest = args.out / name
                written.make_dir(dest.parent)
                write_png(image, dest)
                written.files.append(dest)
                records.append({
                    "input": str(src), "output": str(name), "format": item.info.format, "mode": item.info.mode,
                    "input_size": [item.info.height, item.info.width], "output_size": list(image.shape[-2:]),
                    "conversions": item.conversions, "batch": b,
                    "seconds": round(elapsed / len(chunk), 5), "batch_seconds": round(elapsed, 4),
                })
    total = time.perf_counter() - started

    manifest = {
        "command": "purify",
        "settings": to_dict(cfg),
        "config_file": None if args.config is None else {"path": str(args.config), "kind": config_kind},
        "preset": args.preset,
        "seed": seed,
        "model": cfg.diffusion,
        "resize": args.resize,
        "convert": args.convert,
        "clamp": args.clamp,
        "n_images": len(files),
        "n_converted": sum(1 for r in records if r["conversions"]),
        "timings": {"total_seconds": round(total, 3), "seconds_per_image": round(total / len(files), 4)},
        "environment": environment(device),
        "files": records,
    }
    write_json_atomic(args.out / "manifest.json", manifest, finite=False, default=str)
    written.files.append(args.out / "manifest.json")
    print(f"purified {len(files)} image(s) with {cfg.method} into {args.out} ({total:.1f} s)"
          + (f"; {manifest['n_converted']} converted (see manifest.json)" if manifest["n_converted"] else ""))

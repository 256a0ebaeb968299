"""freqpure analyze --out DIR: damage to amplitude and phase vs frequency, for the attack and the purifiers.

On a deterministic class-balanced CIFAR-10 subset: attack the classifier with PGD (L-inf, 8/255 by default),
purify the adversarial images with DiffPure and with FreqPure (same plan, same noise), and measure the
amplitude and phase damage per radial frequency band. Writes analysis.json, the PNG plots and damage.npz
(the pipeline is freqpure.evaluation.analyze). The attack is against the undefended classifier: this is
about the spectrum, not robustness (that is freqpure evaluate). freqpure report DIR renders it as HTML.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from freqpure.cli.common import add_config_args, add_runtime_args, apply_runtime_args, load_command_config
from freqpure.presets import SAMPLERS, VALUE_ALIASES, VARIANT_CHOICES

__all__ = ["register", "run"]

_FLAGS = ("n", "data_dir", "classifier", "diffusion", "eps", "attack_steps", "step_size", "random_start", "rounds",
          "sampler", "amp_radius", "phase_radius", "delta", "mode", "reference", "include_clean", "max_radius", "ci",
          "n_boot", "amp_floor", "plots", "batch_size", "seed")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="amplitude/phase damage vs frequency for PGD, DiffPure and FreqPure (analysis.json + plots)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n", type=int, help="images: class-balanced CIFAR-10 test subset (default: 256)")
    p.add_argument("--data-dir", metavar="DIR", help="CIFAR-10 folder (default: $FREQPURE_DATA or the usual places)")
    p.add_argument("--classifier", metavar="NAME|PATH",
                   help="classifier name or checkpoint path (default: cifar10-resnet-small)")
    p.add_argument("--diffusion", metavar="NAME|PATH",
                   help="diffusion model name or checkpoint path (default: cifar10-ddpm-small)")
    g = p.add_argument_group("attack (PGD L-inf against the undefended classifier)")
    g.add_argument("--eps", help="L-inf radius, a number or a fraction (default: 8/255)")
    g.add_argument("--attack-steps", type=int, help="PGD iterations (default: 20)")
    g.add_argument("--step-size", help="PGD step, a number or a fraction (default: 2/255)")
    g.add_argument("--no-random-start", dest="random_start", action="store_const", const=False, default=None,
                   help="start PGD at the clean image")
    g = p.add_argument_group("purifiers (DiffPure and FreqPure share the plan, sampler and noise)")
    g.add_argument("--rounds", help="purification plan T:STEPS[,...] (default: 100:20)")
    g.add_argument("--sampler", choices=SAMPLERS, help="sampler: ddpm, ddim or sde (default: ddpm)")
    g.add_argument("--amp-radius", type=float, help="FreqPure amplitude radius (default: 10)")
    g.add_argument("--phase-radius", type=float, help="FreqPure phase radius (default: 10)")
    g.add_argument("--delta", type=float, help="FreqPure phase half-width in radians (default: 0.3)")
    g.add_argument("--mode", choices=(*VARIANT_CHOICES["mode"], *VALUE_ALIASES["mode"]),
                   metavar="{" + ",".join(VARIANT_CHOICES["mode"]) + "}",
                   help="FreqPure exchange arithmetic: paper or official (the official code's; 'reference' is its "
                   "old name) (default: paper)")
    g.add_argument("--reference", choices=VARIANT_CHOICES["reference"],
                   help="FreqPure reference: input, denoised or round-denoised (default: input)")
    g.add_argument("--include-clean", action="store_const", const=True, default=None,
                   help="also purify the clean images")
    g = p.add_argument_group("analysis")
    g.add_argument("--max-radius", type=float, help="last band edge (default: the spectrum's corner)")
    g.add_argument("--ci", choices=["bootstrap", "normal"], help="interval method: bootstrap or normal (default: "
                   "bootstrap)")
    g.add_argument("--n-boot", type=int, help="bootstrap resamples (default: 2000)")
    g.add_argument("--amp-floor", type=float, help="relative amplitude floor (default: 1e-3)")
    g.add_argument("--no-plots", dest="plots", action="store_const", const=False, default=None,
                   help="skip the PNG plots")
    p.add_argument("--batch-size", type=int, help="images per batch (default: 64)")
    p.add_argument("--report", action="store_true", help="also write report.html (freqpure report)")
    add_config_args(p, "analysis", example="--set n=64 --set attack_steps=10")
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure.cli.common import resolve_device
    from freqpure.evaluation.analyze import AnalyzeSettings, run_analysis
    from freqpure.evaluation.lock import locked_folder

    apply_runtime_args(args)
    settings = load_command_config(AnalyzeSettings, args, {k: getattr(args, k) for k in _FLAGS})
    _check_out(args.out)
    with locked_folder(args.out):  # a second analyze into the same folder is refused
        result = run_analysis(settings, args.out, device=resolve_device(args.device), progress=not args.no_progress)
    print(f"analysis: {args.out / 'analysis.json'}")
    for name, t in result["targets"].items():
        value = t["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"  {name}: {shown} (target {t['target']}): {'pass' if t['pass'] else 'FAIL'}")
    if args.report:
        from freqpure.report import write_report

        print(f"report: {write_report(args.out)}")
    return 0


def _check_out(out: Path) -> None:
    """``--out`` must be a new or empty folder, or one holding an earlier analysis (whose files are replaced)."""
    from freqpure.errors import OutputExistsError
    from freqpure.evaluation.lock import LOCK_NAME

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a folder; give a new or empty folder")
    if out.is_dir() and not (out / "analysis.json").is_file() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise OutputExistsError(f"--out {out} holds files but no analysis.json (another command's or your own "
                                "files); give a new or empty folder")

"""``freqpure study``: run or resume the FreqPure-vs-DiffPure study (see :mod:`freqpure.study`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from freqpure.cli.common import add_config_args, add_runtime_args, apply_runtime_args, load_command_config

__all__ = ["register", "run"]

EPILOG = """examples:
  freqpure study --config configs/study-cifar10.yaml --out runs/study --threads 1
  freqpure study --config configs/study-cifar10.yaml --out runs/study --stage stage1-clean   # one stage
  freqpure study --config configs/study-cifar10.yaml --out benchmarks/results/study-cifar10 \
      --part stage4-honest-protocol/freqpure-official-v2                                       # one part
  freqpure study --config configs/study-cifar10.yaml --out benchmarks/results/study-cifar10 \
      --import study-records.tar.gz    # merge the records of another machine (scripts/gpu_study.sh), then tabulate
  freqpure study --config configs/study-cifar10.yaml --out runs/study-gpu --device cuda \\
      --set classifier=robustbench-cifar10-standard --set diffusion=diffpure-cifar10-ncsnpp
Re-running the same command skips every finished part and resumes the unfinished one.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="run or resume the staged FreqPure-vs-DiffPure study (paired tables, CPU hours per stage)",
        description="Run the stages of a study config: clean accuracy and low-band passthrough, and sets of "
                    "evaluation runs. Every stage folder under --out gets stage.md (accuracies with 95% Wilson "
                    "intervals, paired exact McNemar tests against DiffPure) and timing.json; --out/study.md "
                    "collects them. Finished parts are skipped, unfinished ones resumed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "the study's", example="--set seed=1")
    p.add_argument("--out", type=Path, required=True, help="study folder (one sub-folder per stage)")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="run only this stage (repeatable; the others are only tabulated)")
    p.add_argument("--part", action="append", default=[], metavar="STAGE/PART",
                   help="run only this part, e.g. stage4-honest-protocol/diffpure-v2 (repeatable)")
    p.add_argument("--tables-only", action="store_true", help="run nothing; rewrite the tables from what is there")
    p.add_argument("--import", dest="import_from", type=Path, metavar="FOLDER|ARCHIVE",
                   help="merge the part records of another copy of the study (a folder, or the archive "
                        "scripts/gpu_study.sh packs) into --out, then rewrite the tables; runs nothing")
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure.study import StudyConfig, run_study

    apply_runtime_args(args)
    flags = {"seed": args.seed, "device": None if args.device == "auto" else args.device}
    cfg = load_command_config(StudyConfig, args, flags)
    base_dir = args.config.parent if args.config else Path(".")
    if args.import_from is not None:
        from freqpure.study.parts import import_records

        for entry in import_records(args.import_from, args.out):
            print(f"{entry['part']}: {entry['added']} record(s) added to {entry['had']}")
    path = run_study(cfg, args.out, base_dir=base_dir, stages=args.stage or None, parts=args.part or None,
                     progress=not args.no_progress, execute=not args.tables_only and args.import_from is None)
    print(path.read_text())
    print(f"study: {path}")
    return 0

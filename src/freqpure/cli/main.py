"""Entry point of the ``freqpure`` command.

Every module in :mod:`freqpure.cli` that defines ``register(subparsers)`` adds one sub-command;
``register`` sets ``func`` on its parser to a callable ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import freqpure.cli as cli_pkg

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freqpure",
        description="Diffusion purification from the frequency domain (FreqPure, DiffPure) and adaptive attacks.",
    )
    from freqpure import __version__

    parser.add_argument("--version", action="version", version=f"freqpure {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name in {"main", "common"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"freqpure.cli.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, PermissionError) as err:
        # Known user-facing errors: one clear line, no stack trace.
        print(f"freqpure {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``freqpure models [NAME]``: list the registered models, or show one entry."""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models (bundled and published)",
                       description="List registered models, or print one model's registry entry as JSON.")
    p.add_argument("name", nargs="?", help="show this model's entry")
    p.add_argument("--kind", choices=["diffusion", "classifier"], help="only models of this kind")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure.models.registry import list_models, model_info

    if args.name:
        print(json.dumps(model_info(args.name), indent=2, default=str))
        return 0
    print(f"{'name':40s} {'kind':11s} description")
    for name in list_models(args.kind):
        info = model_info(name)
        print(f"{name:40s} {info.get('kind', '?'):11s} {info.get('description', '')[:90]}")
    return 0

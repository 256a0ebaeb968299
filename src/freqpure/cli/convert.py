"""freqpure convert: turn a published checkpoint into a pickle-free .safetensors file, once.

Run it on a trusted machine. By default the input is read with torch.load(weights_only=True);
--trust-pickle allows full unpickling (which can run code from the file). The output carries
freqpure metadata (architecture, config, preprocessing), so freqpure.load_diffusion(out) /
load_classifier(out) rebuild it without any pickle.
"""

from __future__ import annotations

import argparse
import json
import sys

from freqpure.errors import UsageError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from freqpure.models.registry import ARCHS, PUBLISHED

    p = subparsers.add_parser(
        "convert",
        help="convert a published checkpoint to .safetensors (loads without pickle afterwards)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="published checkpoint file (.pt/.pth/.safetensors)")
    p.add_argument("--to", dest="output", metavar="OUT",
                   help="output .safetensors path (default: <model-name>.safetensors next to CKPT, "
                        "which the registry finds when that directory is the checkpoint directory)")
    p.add_argument("--arch", metavar="NAME",
                   help=f"model name ({', '.join(PUBLISHED)}) or architecture ({', '.join(ARCHS)}); "
                        "default: detected from the file name or its keys")
    p.add_argument("--arch-config", dest="arch_config", metavar="JSON",
                   help="architecture constructor kwargs as JSON (with --arch ARCH), for non-published configs")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling arbitrary objects (RUNS CODE FROM THE FILE; trusted sources only)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure.models.convert import convert_checkpoint

    config = None
    if args.arch_config:
        try:
            config = json.loads(args.arch_config)
        except json.JSONDecodeError as err:
            raise UsageError(f"--arch-config is not valid JSON: {err}") from None
        if not isinstance(config, dict):
            raise UsageError("--arch-config must be a JSON object of constructor kwargs")
    if args.trust_pickle:
        print(f"warning: --trust-pickle: fully unpickling {args.checkpoint} (can run code from the file)",
              file=sys.stderr)
    try:
        out, meta = convert_checkpoint(args.checkpoint, args.output, arch=args.arch, config=config,
                                       trust_pickle=args.trust_pickle, overwrite=args.force)
    except FileExistsError as err:
        raise UsageError(str(err)) from None
    loader = "load_diffusion" if meta["freqpure_kind"] == "diffusion" else "load_classifier"
    print(f"wrote {out}")
    print(f"  model: {meta['freqpure_name']} ({meta['freqpure_kind']}, arch {meta['freqpure_arch']})")
    print(f"  source: {meta['freqpure_source']} sha256 {meta['freqpure_source_sha256']}")
    print(f"  load with: freqpure.{loader}({str(out)!r})")
    return 0

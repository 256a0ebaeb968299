"""freqpure models [NAME]: a table of the registered models, or one model's registry entry."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

__all__ = ["register", "run", "model_rows"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models: kind, parameters, size, offline availability",
                       description="A table of the registered models (bundled and published): name, kind, parameter "
                                   "count, size on disk, and whether it works offline here, or where to get its "
                                   "checkpoint. With NAME, that model's registry entry as JSON.")
    p.add_argument("name", nargs="?", help="show this model's entry")
    p.add_argument("--kind", choices=["diffusion", "classifier"], help="only models of this kind: diffusion or "
                   "classifier")
    p.set_defaults(func=run)


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G"):
        if abs(n) < 1000 or suffix == "G":
            return f"{n:.3g}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.3g}{unit}"  # pragma: no cover


def _bundled_params(name: str, kind: str) -> int:
    """Trainable parameters of a bundled model (small: loaded from its file)."""
    from freqpure.models.registry import load_classifier, load_diffusion

    model = (load_diffusion if kind == "diffusion" else load_classifier)(name)
    return sum(p.numel() for p in model.parameters())


def _published_params(name: str) -> int | None:
    from freqpure.models.registry import PUBLISHED, build_network

    spec = PUBLISHED[name]
    try:
        net = build_network(spec.arch, spec.config, device=None, meta=True)
    except Exception:  # an architecture that cannot be built on the meta device: leave the count out
        return None
    return sum(p.numel() for p in net.parameters())


def model_rows(kind: str | None = None) -> list[dict[str, Any]]:
    """One row per model: ``name``, ``kind``, ``params``, ``size`` (bytes; fp32 estimate for a missing file),
    ``available`` (offline here) and ``where`` (the file, or where to get it)."""
    from freqpure.models.bundled import WEIGHTS_DIR
    from freqpure.models.registry import PUBLISHED, checkpoint_dir, list_models, model_info

    rows = []
    root, origin = checkpoint_dir()
    for name in list_models(kind):
        info = model_info(name)
        steps = f"0..{info['t_max'] - 1}" if info.get("t_max") else "-"  # diffusion: the trained step range
        if info.get("bundled"):
            path = WEIGHTS_DIR / info["file"]
            if not path.is_file():  # a bundled entry whose weights this install lacks (still training, say)
                rows.append({"name": name, "kind": info["kind"], "params": None, "size": None,
                             "size_estimated": False, "available": False,
                             "where": f"weights not in this install ({path.name}): see docs/models.md", "steps": steps})
                continue
            rows.append({"name": name, "kind": info["kind"], "params": _bundled_params(name, info["kind"]),
                         "size": path.stat().st_size, "size_estimated": False, "available": True,
                         "where": "bundled with freqpure", "steps": steps})
            continue
        spec = PUBLISHED[name]
        found = next((root / rel for rel in [f"{name}.safetensors", *spec.files] if (root / rel).is_file()), None)
        params = _published_params(name)
        size = found.stat().st_size if found else (4 * params if params else None)
        link = re.search(r"[\w.-]+\.(?:com|org|io)/[\w./-]*\w", spec.source)
        where = str(found) if found else f"needs {spec.files[0]} from {link.group(0) if link else spec.source}"
        rows.append({"name": name, "kind": info["kind"], "params": params, "size": size,
                     "size_estimated": found is None, "available": found is not None, "where": where,
                     "steps": steps})
    return rows


def run(args: argparse.Namespace) -> int:
    from freqpure.models.registry import model_info

    if args.name:
        print(json.dumps(model_info(args.name), indent=2, default=str))
        return 0
    rows = model_rows(args.kind)
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':{width}s}  {'kind':10s} {'params':>7s} {'size':>9s}  {'steps':7s}  offline  where")
    for r in rows:
        params = _human(r["params"]) if r["params"] else "?"
        size = ("~" if r["size_estimated"] else "") + _human(r["size"], "B") if r["size"] else "?"
        offline = "yes" if r["available"] else "no"
        lead = f"{r['name']:{width}s}  {r['kind']:10s} {params:>7s} {size:>9s}  {r['steps']:7s}  {offline:7s}  "
        print(lead + r["where"])
    from freqpure.models.registry import checkpoint_dir

    root, origin = checkpoint_dir()
    print(f"\nsteps: the diffusion step indices a model was trained on (purifiers refuse plans beyond them); "
          f"size: the file on disk (~: fp32 estimate, the checkpoint is not here). Checkpoints are looked up in "
          f"{root} ({origin}); see docs/checkpoints.md, and freqpure models NAME for one entry in full.")
    return 0

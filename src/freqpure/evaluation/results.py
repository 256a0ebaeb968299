"""Turning per-sample records into ``results.json``, ``results.md`` and ``examples.npz``."""

from __future__ import annotations

import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["wilson_interval", "accuracy", "package_versions", "write_json", "render_markdown", "assemble_examples",
           "EXAMPLES_MAX"]

EXAMPLES_MAX = 16  # examples.npz holds the first (by subset position) <= 16 samples


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for ``k`` successes out of ``n`` (``(0, 1)`` for ``n = 0``)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def accuracy(flags: list[bool]) -> dict[str, Any]:
    """``{"correct", "n", "accuracy", "ci95": [lo, hi]}`` for a list of per-sample booleans."""
    k, n = int(sum(bool(f) for f in flags)), len(flags)
    lo, hi = wilson_interval(k, n)
    return {"correct": k, "n": n, "accuracy": k / n if n else float("nan"), "ci95": [lo, hi]}


def package_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that change numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("freqpure", "torch", "numpy", "torchsde", "pyautoattack"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _clean_json(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_json(v) for v in obj]
    return obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temporary file, fsync, rename); NaN/Inf become null."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_clean_json(data), f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pct(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}] | {entry['correct']}/{entry['n']}"


def render_markdown(results: dict[str, Any]) -> str:
    """A markdown summary: the accuracy table, the protocol and the sanity checks."""
    cfg = results["config"]
    lines = [
        f"# {results['name']}",
        "",
        f"Defence: `{results['defence']}` · classifier `{cfg['classifier']['name']}` · "
        f"n = {results['n']} · seed {results['seed']}",
        "",
        "| metric | accuracy | 95% CI (Wilson) | correct/n |",
        "|---|---|---|---|",
        f"| clean (standard) | {_pct(results['clean'])} |",
        f"| **robust (worst case over attacks)** | {_pct(results['robust'])} |",
    ]
    for label, entry in results["per_attack"].items():
        lines.append(f"| under `{label}` | {_pct(entry)} |")
    for label, entry in results.get("undefended", {}).items():
        lines.append(f"| undefended classifier, PGD {label} (sanity) | {_pct(entry)} |")
    lines += ["", "## Protocol", ""]
    for key, value in results["protocol"].items():
        if isinstance(value, dict):
            lines.append(f"- **{key}**:")
            lines += [f"  - `{k}`: {v}" for k, v in value.items()]
        else:
            lines.append(f"- **{key}**: {value}")
    sanity = results.get("sanity", {})
    if sanity:
        lines += ["", "## Sanity checks", ""]
        for key, value in sanity.items():
            lines.append(f"- **{key}**: {json.dumps(_clean_json(value))}")
    if results.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in results["warnings"]]
    t = results.get("timings", {})
    if t:
        lines += ["", f"Time: {t.get('sample_seconds_total', 0):.1f} s of batch work "
                      f"({t.get('seconds_per_sample', 0):.2f} s/sample), {results.get('world_size', 1)} process(es)."]
    return "\n".join(lines) + "\n"


def assemble_examples(parts_dir: Path, out_path: Path, class_names: list[str], limit: int = EXAMPLES_MAX) -> int:
    """Concatenate per-batch example parts (``examples-b*.npz``) into ``examples.npz`` in subset order.

    Keys: ``clean``, ``adversarial``, ``purified`` (float32 ``[N, C, H, W]`` in [0, 1]), ``labels``,
    ``pred_clean``, ``pred_adversarial`` (int64 ``[N]``), ``class_names`` (str), ``positions``.
    Returns N.
    """
    parts = sorted(parts_dir.glob("examples-b*.npz"))
    if not parts:
        return 0
    loaded = [dict(np.load(p)) for p in parts]
    merged = {k: np.concatenate([d[k] for d in loaded]) for k in loaded[0]}
    order = np.argsort(merged["positions"], kind="stable")[:limit]
    out = {k: v[order] for k, v in merged.items()}
    for key in ("clean", "adversarial", "purified"):
        out[key] = out[key].astype(np.float32)
    for key in ("labels", "pred_clean", "pred_adversarial", "positions"):
        out[key] = out[key].astype(np.int64)
    out["class_names"] = np.array(class_names, dtype=str)
    tmp = out_path.with_name(out_path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **out)
    os.replace(tmp, out_path)
    return len(order)

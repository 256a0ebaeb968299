"""Trained weights → a freqpure ``.safetensors`` file whose metadata carries its construction recipe.

Metadata keys (read by :mod:`freqpure.models.bundled` and the registry): ``freqpure_kind``,
``freqpure_arch``, ``freqpure_config`` (JSON constructor kwargs), and ``freqpure_<extra>`` for the
training step, measured quality and, for diffusion models, ``freqpure_t_max`` (the trained step range).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from freqpure._fileio import atomic_path
from freqpure.errors import NotFoundError
from freqpure.training.loop import CHECKPOINT, load_checkpoint

__all__ = ["save_safetensors", "export_diffusion", "export_classifier", "export_run", "weights_metadata"]


def save_safetensors(state: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str],
                     fp16: bool = True) -> None:
    """Write a state dict (fp16 floats when ``fp16``) atomically with string metadata."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if fp16 and v.is_floating_point():
            v = v.half()
        out[k] = v.contiguous()
    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata=metadata)


def weights_metadata(kind: str, arch: str, model_kwargs: dict[str, Any], **extra: Any) -> dict[str, str]:
    """The ``freqpure_*`` metadata of a weights file (extras as strings, or JSON for other values)."""
    meta = {"freqpure_kind": kind, "freqpure_arch": arch, "freqpure_config": json.dumps(model_kwargs)}
    meta.update({f"freqpure_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return meta


def export_diffusion(ckpt: dict[str, Any], out: str | os.PathLike, **extra: Any) -> Path:
    """Write the EMA weights of a diffusion checkpoint as a bundled safetensors file (with its t_max)."""
    cfg = ckpt["config"]
    meta = weights_metadata(
        "diffusion",
        cfg["arch"],
        cfg["model"],
        train_step=ckpt["step"],
        schedule="linear-beta 1e-4..2e-2 x1000",
        t_max=cfg.get("t_max", 1000),
        **extra,
    )
    save_safetensors(ckpt["ema"], out, meta)
    return Path(out)


def export_classifier(ckpt: dict[str, Any], out: str | os.PathLike, **extra: Any) -> Path:
    """Write a classifier checkpoint's weights as a bundled safetensors file."""
    cfg = ckpt["config"]
    meta = weights_metadata(
        "classifier", cfg["arch"], cfg["model"], train_step=ckpt["step"], input_range="[0,1]", **extra
    )
    save_safetensors(ckpt["model"], out, meta)
    return Path(out)


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export the latest checkpoint of a run (diffusion: EMA weights) to a bundled safetensors file."""
    ckpt_path = Path(run_dir) / CHECKPOINT
    if not ckpt_path.exists():
        raise NotFoundError(f"no checkpoint at {ckpt_path}")
    ckpt = load_checkpoint(ckpt_path)
    if "ema" in ckpt:
        return export_diffusion(ckpt, Path(out))
    extra: dict[str, Any] = {}
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.exists():  # carry the final accuracy into the metadata when the run has finished
        for line in metrics.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "final_test_acc" in row and row["step"] == ckpt["step"]:
                extra = {
                    "test_accuracy_no_tta": round(row["final_test_acc_no_tta"], 4),
                    "test_accuracy_flip_tta": round(row["final_test_acc"], 4),
                }
    return export_classifier(ckpt, Path(out), **extra)

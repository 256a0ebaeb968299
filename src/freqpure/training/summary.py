"""Key numbers and a small plot of a run, from its ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from freqpure.errors import NotFoundError

__all__ = ["summarize_run", "plot_run"]


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise NotFoundError(f"no metrics.jsonl in {run_dir}")
    from freqpure.training.loop import read_metrics

    return read_metrics(path)


def summarize_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Key numbers of a run from its ``metrics.jsonl``: step, training wall time, recent loss, evals.

    ``train_step_hours`` sums the logged training intervals: evaluation time and pauses between a
    kill and a resume do not count.
    """
    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    loss_rows = [r for r in rows if "loss" in r and "images_per_s" in r]
    step = max((r["step"] for r in rows), default=0)
    seconds, prev = 0.0, 0
    for r in loss_rows:
        seconds += (r["step"] - prev) * cfg.get("batch_size", 1) / max(r["images_per_s"], 1e-9)
        prev = r["step"]
    recent = loss_rows[-10:]
    out: dict[str, Any] = {
        "run": str(run_dir),
        "step": step,
        "train_step_hours": round(seconds / 3600, 3),  # logged training steps only, no evals
        "images_per_s_recent": round(sum(r["images_per_s"] for r in recent) / max(1, len(recent)), 1),
        "loss_recent": round(sum(r["loss"] for r in recent) / max(1, len(recent)), 5),
    }
    evals = [r for r in rows if any(k.startswith(("test_acc", "eval_", "final_")) for k in r)]
    if evals:
        out["evals"] = [{k: v for k, v in r.items() if k != "time"} for r in evals]
    return out


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Save a small PNG of the loss curve (and test accuracy / denoising MSE) of a run (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    acc = [(r["step"], r["test_acc"]) for r in rows if "test_acc" in r]
    mse = [(r["step"], r["eval_denoise_mse_t100"]) for r in rows if "eval_denoise_mse_t100" in r]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    ax[0].plot(*zip(*loss), lw=0.8)
    ax[0].set(xlabel="step", ylabel="training loss", yscale="log", title=run_dir.name)
    if acc:
        ax[1].plot(*zip(*acc), marker="o")
        ax[1].set(xlabel="step", ylabel="test accuracy (flip TTA)")
    elif mse:
        ax[1].plot(*zip(*mse), marker="o")
        ax[1].set(xlabel="step", ylabel="EMA x0-MSE, t=100", yscale="log")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out

"""The loop every training task shares: run folder, resume, stop flag, checkpoint/export cadence, metrics, progress.

A task (:class:`TrainTask`) says how to build its networks, what one optimiser step does and what
happens at checkpoints and at the end; :func:`run_training` does the rest, identically for all tasks:

* ``<run_dir>/config.json`` and ``<run_dir>/checkpoint.pt`` (a dict with the task's state dicts,
  ``step``, ``rng``, ``config``, ``time``; loaded with ``weights_only=True``) are written atomically,
  the checkpoint every ``ckpt_every`` steps, on SIGINT/SIGTERM and at the end;
* a restart with the same ``run_dir`` continues the exact same trajectory (same data order,
  augmentation, noise and dropout draws) and drops metric rows written after the last checkpoint;
* ``<run_dir>/metrics.jsonl`` gets one row per ``log_every`` steps (mean loss, lr, images/s).

Randomness: the epoch's data order comes from a generator seeded with ``(seed, epoch)``; every other
draw (augmentation, diffusion step indices and noise) comes from one ``torch.Generator`` whose state is
checkpointed; dropout uses torch's global generator, seeded once and checkpointed as well.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from freqpure._fileio import atomic_path
from freqpure.config.io import upgrade_keys
from freqpure.errors import CheckpointError, NotFoundError, UsageError

__all__ = [
    "CHECKPOINT",
    "Metrics",
    "TrainTask",
    "epoch_batches",
    "load_checkpoint",
    "read_metrics",
    "run_training",
    "save_checkpoint",
]

CHECKPOINT = "checkpoint.pt"
# Settings that do not change the trajectory and may differ on resume (the classifier's ``epochs``
# sets its LR schedule, so it may not).
RESUME_MAY_CHANGE = frozenset({"log_every", "ckpt_every", "export_every", "steps", "data_dir", "eval_images"})


CHECKPOINT_KEYS = ("step", "config", "model")  # what every training checkpoint holds (export and resume read them)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint (``weights_only=True``); a file that is not one is a :class:`CheckpointError`.

    Refused: a pickle that asks for code (never run), a truncated or empty file, and a dict without
    :data:`CHECKPOINT_KEYS`.
    """
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the error below says it all
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused to load: it holds more than tensors and plain containers (a "
                              "pickle that would run code, or not a training checkpoint); nothing in it was "
                              "run") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, IndexError, KeyError) as err:
        text = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable training checkpoint (truncated or damaged: {text})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a freqpure training checkpoint (needs {', '.join(CHECKPOINT_KEYS)}; "
                              f"has {have})")
    return ckpt


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``, each checked: a JSON object with a whole-number ``step`` >= 0
    and numbers for ``loss``, ``lr`` and ``images_per_s`` where present. A torn last line (a kill
    mid-write) is skipped; any other bad line is a :class:`UsageError` naming the file and line."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1]  # torn tail
    rows = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{path}:{number}: not a JSON row; the log was edited or damaged") from None
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UsageError(f"{path}:{number}: a row needs a whole-number step >= 0, got "
                             f"{raw[:80].decode(errors='replace')}")
        for key in ("loss", "lr", "images_per_s"):
            value = row.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{path}:{number}: {key} must be a number, got {value!r}")
        rows.append(row)
    return rows


def save_checkpoint(snap: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a checkpoint dict atomically (a crash leaves the previous checkpoint intact)."""
    with atomic_path(path) as tmp:
        torch.save(snap, tmp)


def _write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class Metrics:
    """Append-only JSONL log that drops rows beyond the resumed step."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
            kept = [row for row in read_metrics(path) if row["step"] <= resume_step]
            _write_text("".join(json.dumps(row) + "\n" for row in kept), path)

    def write(self, **row: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class _LossWindow:
    """Running mean of the loss and throughput since the last log line."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        self.total, self.count, self.since = 0.0, 0, time.time()

    def add(self, loss: float) -> None:
        self.total += loss
        self.count += 1

    def flush(self, metrics: Metrics, bar: Any, step: int, lr: float, **extra: Any) -> None:
        """Write one metrics row (mean loss, lr, images/s), show the loss on the bar, start a new window."""
        now = time.time()
        mean = self.total / self.count
        metrics.write(step=step, **extra, loss=mean, lr=lr,
                      images_per_s=self.count * self.batch_size / max(now - self.since, 1e-9), time=now)
        bar.set_postfix(loss=f"{mean:.4f}")
        self.reset()


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag so the loop can checkpoint before exiting."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _prepare_run_dir(run_dir: Path, config: Any, resume: bool | None) -> dict[str, Any] | None:
    """Create ``run_dir``, save/compare the config, and return the checkpoint to resume from (if any)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    cfg = asdict(config)
    cfg_path = run_dir / "config.json"
    if ckpt_path.exists() and resume is not False:
        ckpt = load_checkpoint(ckpt_path)
        old = upgrade_keys(type(config), dict(ckpt["config"]))  # older spellings (amp) in today's form
        diff = {k: (old.get(k), v) for k, v in cfg.items() if k not in RESUME_MAY_CHANGE and old.get(k) != v}
        if diff:
            raise UsageError(f"{run_dir} holds a run with a different config {diff}; use a new --out dir")
        _write_text(json.dumps(cfg, indent=2) + "\n", cfg_path)
        return ckpt
    if resume:
        raise NotFoundError(f"--resume given but {ckpt_path} does not exist")
    if ckpt_path.exists():
        raise UsageError(f"{run_dir} already holds a checkpoint; resume it or choose another --out dir")
    _write_text(json.dumps(cfg, indent=2) + "\n", cfg_path)
    return None


def epoch_batches(seed: int, n: int, batch_size: int, start_step: int) -> Iterator[tuple[int, Tensor]]:
    """Endless (step, indices) stream: epochs of ``n // batch_size`` full batches, resumable at any step."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise UsageError(f"batch size {batch_size} exceeds the {n} training images")
    step = start_step
    while True:
        epoch, i = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for j in range(i, per_epoch):
            yield step, order[j * batch_size : (j + 1) * batch_size]
            step += 1


class TrainTask(Protocol):
    """What a training task supplies to :func:`run_training` (see ``diffusion.py`` / ``classifier.py``)."""

    config: Any  # a config dataclass with name, seed, batch_size, log_every, ckpt_every

    def build(self, ckpt: dict[str, Any] | None) -> None:
        """Build networks and optimiser (global RNG already seeded); load ``ckpt``'s state dicts if given."""

    def state(self) -> dict[str, Any]:
        """The state dicts stored in a checkpoint, in order (e.g. ``model``, ``ema``, ``optimizer``)."""

    def prepare_data(self) -> int:
        """Load the training data; returns the number of training images."""

    def total_steps(self) -> int:
        """The step at which training is complete."""

    def train_step(self, step: int, idx: Tensor, gen: torch.Generator) -> tuple[float, float]:
        """One optimiser step on the images ``idx``; returns (loss, lr)."""

    def log_extra(self, step: int) -> dict[str, Any]:
        """Extra fields of a loss row (written before ``loss``)."""

    def after_step(self, step: int, ctx: LoopContext) -> None:
        """Hook after every step (e.g. the classifier's per-epoch evaluation)."""

    def on_checkpoint(self, step: int, snap: dict[str, Any], ctx: LoopContext) -> None:
        """Hook after every periodic checkpoint (e.g. the diffusion model's periodic export)."""

    def finish(self, step: int, snap: dict[str, Any], ctx: LoopContext) -> None:
        """Hook after the final checkpoint (export, final evaluation)."""


class LoopContext:
    """What hooks may use: the metrics log, the progress bar, the run folder and why the loop ended."""

    def __init__(self, run_dir: Path, metrics: Metrics, bar: Any, window: _LossWindow) -> None:
        self.run_dir, self.metrics, self.bar, self.window = run_dir, metrics, bar, window
        self.stopped = False  # SIGINT/SIGTERM

    def exclude_elapsed(self) -> None:
        """Do not count the time so far (an evaluation) as training throughput."""
        self.window.since = time.time()


def _rng_state(gen: torch.Generator) -> dict[str, Tensor]:
    return {"gen": gen.get_state(), "torch": torch.get_rng_state()}


def run_training(task: TrainTask, run_dir: str | os.PathLike, *, resume: bool | None = None,
                 stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) ``task`` in ``run_dir``; returns the final checkpoint dict.

    ``resume``: ``None`` resumes when a checkpoint exists, ``True`` requires one, ``False`` refuses one.
    ``stop_after``: stop (with a checkpoint) once this global step is reached, as if killed there.
    """
    run_dir = Path(run_dir)
    config = task.config
    ckpt = _prepare_run_dir(run_dir, config, resume)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    task.build(ckpt)
    step = 0
    if ckpt is not None:
        gen.set_state(ckpt["rng"]["gen"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        step = int(ckpt["step"])
    metrics = Metrics(run_dir / "metrics.jsonl", step)
    n_train = task.prepare_data()
    total = task.total_steps()

    def save() -> dict[str, Any]:
        snap = {**task.state(), "step": step, "rng": _rng_state(gen), "config": asdict(config), "time": time.time()}
        save_checkpoint(snap, run_dir / CHECKPOINT)
        return snap

    end = min(total, stop_after) if stop_after is not None else total
    window = _LossWindow(config.batch_size)
    bar = tqdm(total=end, initial=step, disable=not progress, desc=config.name, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    ctx = LoopContext(run_dir, metrics, bar, window)
    with _StopFlag() as flag:
        batches = epoch_batches(config.seed, n_train, config.batch_size, step)
        while step < end and not flag.stop:
            _, idx = next(batches)
            loss, lr = task.train_step(step, idx, gen)
            step += 1
            window.add(loss)
            bar.update(1)
            if step % config.log_every == 0 or step == end:
                window.flush(metrics, bar, step, lr, **task.log_extra(step))
            task.after_step(step, ctx)
            if step % config.ckpt_every == 0:
                task.on_checkpoint(step, save(), ctx)
        ctx.stopped = flag.stop
    bar.close()
    snap = save()
    task.finish(step, snap, ctx)
    return snap

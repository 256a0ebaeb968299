"""Purified copies of a CIFAR-10 split, for purifier-aware classifier fine-tuning.

``purify_split`` runs DiffPure (noise to ``t_star``, ``steps`` reverse DDPM steps) with a bundled or
given diffusion model over every image of a split and stores the result, quantised to uint8, in a
safetensors file: ``images`` ``[N, 32, 32, 3]`` uint8 (same layout and order as
:func:`freqpure.data.load_cifar10`), ``labels`` ``[N]`` int64, and metadata naming the diffusion
weights (with their SHA-256), the settings and the seed. Image ``i`` of chunk ``c`` is purified with
``StepNoise(seed).child(c)``, so the file is reproducible and the job resumes chunk-exactly from
``<out>.partial`` after a kill. :func:`load_purified` checks a file against the split it claims to
copy, so a classifier is never trained on misaligned pairs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from freqpure.data import load_cifar10
from freqpure.errors import NotFoundError, UsageError
from freqpure.models.checkpoint import CheckpointError, read_safetensors, sha256_of, write_safetensors

__all__ = ["PurifySplitConfig", "purify_split", "load_purified"]

FORMAT = "freqpure-purified-split-v1"


@dataclass(frozen=True)
class PurifySplitConfig:
    """What to purify and how (DiffPure with the discrete DDPM chain)."""

    split: str = "train"
    diffusion: str = "cifar10-ddpm-small"  # bundled name or a .safetensors path
    t_star: int = 100
    steps: int = 5
    sampler: str = "ddpm"
    seed: int = 0
    chunk: int = 256
    amp: str = "bf16"  # "bf16" autocast for the ε-model on CPU, or "none"


def _diffusion(name_or_path: str) -> tuple[Any, Path]:
    """The ε-model (via the registry) and the file its weights came from (hashed into the metadata)."""
    from freqpure.models.bundled import BUNDLED, weights_path
    from freqpure.models.registry import load_diffusion

    path = weights_path(name_or_path) if name_or_path in BUNDLED else Path(name_or_path)
    return load_diffusion(name_or_path), path


def _metadata(config: PurifySplitConfig, weights_sha256: str, n: int, done: int) -> dict[str, str]:
    return {
        "format": FORMAT,
        "config": json.dumps(asdict(config), sort_keys=True),
        "diffusion_sha256": weights_sha256,
        "n": str(n),
        "done": str(done),
    }


def _save(path: Path, images: np.ndarray, labels: np.ndarray, meta: dict[str, str]) -> None:
    write_safetensors(path, {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, meta)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        tensors, meta = read_safetensors(path)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if meta.get("format") != FORMAT or not {"images", "labels"} <= set(tensors):
        raise UsageError(f"{path}: not a freqpure purified-split file (format {meta.get('format')!r})")
    return tensors, meta


def purify_split(
    config: PurifySplitConfig,
    out: str | os.PathLike,
    *,
    data_dir: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    save_every: int = 16,
    force: bool = False,
) -> Path:
    """Purify every image of ``config.split`` (or its first ``limit``) and write ``out``; returns ``out``.

    Progress is saved to ``<out>.partial`` every ``save_every`` chunks; re-running the same call
    resumes there. An existing ``out`` is replaced only with ``force`` (checked before any work).
    """
    from freqpure._fileio import check_output_file
    from freqpure.evaluation.lock import RunLock

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"--limit must be a whole number >= 1 (the first N images), got {limit!r}")
    out = check_output_file(out, "output", force=force)
    lock = RunLock(out.parent, name=f".{out.name}.lock", subject=f"output {out}").acquire()
    try:  # one writer per output: a second purify-data into the same file is refused
        check_output_file(out, "output", force=force)  # again, under the lock: another run may have finished it
        return _purify_split(config, out, data_dir=data_dir, limit=limit, progress=progress, save_every=save_every)
    finally:
        lock.path.unlink(missing_ok=True)  # while held: a run that opened it meanwhile is refused
        lock.release()


def _purify_split(config: PurifySplitConfig, out: Path, *, data_dir: str | None, limit: int | None, progress: bool,
                  save_every: int) -> Path:
    """:func:`purify_split` once the output is checked and locked."""
    from freqpure.purifiers import DiffPure
    from freqpure.samplers import StepNoise

    partial = out.with_name(out.name + ".partial")
    x_u8, y = load_cifar10(config.split, data_dir)
    if limit is not None:
        x_u8, y = x_u8[:limit], y[:limit]
    labels = np.array(y, dtype=np.int64)  # a writable copy
    n = len(labels)
    eps_model, weights = _diffusion(config.diffusion)
    purifier = DiffPure(eps_model, t_star=config.t_star, steps=config.steps, sampler=config.sampler)
    sha = sha256_of(weights)
    meta = _metadata(config, sha, n, 0)

    images = np.zeros((n, *x_u8.shape[1:]), dtype=np.uint8)
    done = 0
    if partial.exists():
        tensors, old = _read(partial)
        if {k: old.get(k) for k in ("config", "diffusion_sha256", "n")} != {
            k: meta[k] for k in ("config", "diffusion_sha256", "n")
        }:
            raise UsageError(f"{partial}: was made with other settings or weights; delete it to start over")
        images = tensors["images"].numpy().copy()
        done = int(old["done"])
    out.parent.mkdir(parents=True, exist_ok=True)

    use_bf16 = config.amp == "bf16"
    chunks = range(done // config.chunk, -(-n // config.chunk))
    start = time.time()
    with tqdm(total=n, initial=done, disable=not progress, desc=f"purify {config.split}", unit="img") as bar:
        for c in chunks:
            lo, hi = c * config.chunk, min(n, (c + 1) * config.chunk)
            x = torch.from_numpy(x_u8[lo:hi].transpose(0, 3, 1, 2).copy()).float().div_(255)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                purified = purifier(x, StepNoise(config.seed).child(c)).float()
            q = purified.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            images[lo:hi] = q
            done = hi
            if (c + 1) % save_every == 0 and done < n:
                _save(partial, images, labels, _metadata(config, sha, n, done))
            bar.update(hi - lo)
    final = meta | {"done": str(n), "seconds": f"{time.time() - start:.0f}"}
    _save(out, images, labels, final)
    partial.unlink(missing_ok=True)
    return out


def load_purified(
    path: str | os.PathLike, expect_labels: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(images [N,32,32,3] uint8, info)`` from a :func:`purify_split` file.

    ``expect_labels`` (the split's labels) must equal the stored ones, else ``ValueError``: the file
    belongs to another split, subset or order.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"purified data file {path} does not exist (make it with `freqpure train purify-data`)")
    tensors, meta = _read(path)
    if meta.get("done") != meta.get("n"):
        raise UsageError(f"{path}: incomplete ({meta.get('done')} of {meta.get('n')} images purified)")
    images, labels = tensors["images"].numpy(), tensors["labels"].numpy()
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
        raise UsageError(f"{path}: images must be [N,H,W,3] uint8 matching {len(labels)} labels, got {images.shape}")
    if expect_labels is not None and not np.array_equal(labels, np.asarray(expect_labels, dtype=np.int64)):
        raise UsageError(f"{path}: its labels do not match the training split (another split, subset or order)")
    info = {"config": json.loads(meta["config"]), "diffusion_sha256": meta["diffusion_sha256"], "n": len(labels)}
    return images, info

"""Purified copies of a CIFAR-10 split, for purifier-aware classifier fine-tuning.

``purify_split`` runs a purifier (a :class:`~freqpure.config.PurifierConfig`; by default DiffPure, noise to
t* = 100 and 5 reverse DDPM steps) with a bundled or given diffusion model over every image of a split and
stores the result, quantised to uint8, in a safetensors file: ``images`` ``[N, 32, 32, 3]`` uint8 (same
layout and order as :func:`freqpure.data.load_cifar10`), ``labels`` ``[N]`` int64, and metadata naming the diffusion
weights (with their SHA-256), the settings and the seed. Image ``i`` of chunk ``c`` is purified with
:func:`~freqpure.noise.purify_chunk_stream` (path ``(seed, c)``), so the file is reproducible and the job resumes
chunk-exactly from ``<out>.partial`` after a kill. :func:`load_purified` checks a file against the split it claims to
copy, so a classifier is never trained on misaligned pairs.

The settings recorded in a file (its ``config`` metadata, compared on resume) are :meth:`PurifySplitConfig.record`:
for a one-round DiffPure (every file written before the purifier was nested) the flat dict files have always
held (``split``, ``diffusion``, ``t_star``, ``steps``, ``sampler``, ``seed``, ``chunk``, ``amp``), so those
files still resume; any other purifier is recorded nested (``purifier``: its full settings).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from freqpure.config import PurifierConfig, from_dict, nested_alias, to_dict, with_resolved_precision
from freqpure.data import load_cifar10
from freqpure.errors import NotFoundError, UsageError
from freqpure.models.checkpoint import CheckpointError, read_safetensors, sha256_of, write_safetensors
from freqpure.noise import purify_chunk_stream

__all__ = ["PurifySplitConfig", "purify_split", "load_purified"]

FORMAT = "freqpure-purified-split-v1"


def _default_purifier() -> PurifierConfig:
    """DiffPure, t* = 100, 5 DDPM steps, the bundled small DDPM, bf16 autocast: what purify-data has always run."""
    return PurifierConfig(method="diffpure", diffusion="cifar10-ddpm-small", rounds="100:5", sampler="ddpm",
                          precision="bf16")


_ONE_ROUND = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
_AMP = {"bf16": "bf16", "none": "fp32"}  # the old key amp -> purifier.precision


def _one_round(rounds: Any) -> tuple[int, int] | None:
    """``(t_star, steps)`` of a one-round plan ``"T:S"``, else ``None``."""
    match = _ONE_ROUND.fullmatch(str(rounds))
    return (int(match[1]), int(match[2])) if match else None


def _plan_alias(key: str) -> Any:
    """The old key ``t_star`` or ``steps``: one half of the one-round plan ``purifier.rounds`` (the other half
    from the same mapping's old key, else from its plan, else the default ``100:5``)."""
    def alias(value: Any, data: dict[str, Any]) -> dict[str, Any]:
        rounds = (data.get("purifier") or {}).get("rounds", _default_purifier().rounds)
        plan = _one_round(rounds)
        if plan is None:
            raise UsageError(f"{key} sets one half of a one-round plan, but purifier.rounds is {rounds!r}: give "
                             "purifier.rounds only")
        t_star, steps = data.get("t_star", plan[0]), data.get("steps", plan[1])
        t_star, steps = (value, steps) if key == "t_star" else (t_star, value)
        return {"purifier": {"rounds": f"{t_star}:{steps}"}}

    return alias


def _amp_alias(value: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The old key ``amp`` (``bf16`` or ``none``) as ``purifier.precision`` (``bf16`` or ``fp32``)."""
    if value not in _AMP:
        raise UsageError(f"amp (the old spelling of purifier.precision) must be bf16 or none, got {value!r}")
    return {"purifier": {"precision": _AMP[value]}}


@dataclass(frozen=True)
class PurifySplitConfig:
    """What to purify and how: ``purifier`` (default: DiffPure ``100:5`` with the discrete DDPM chain on the bundled
    small DDPM, in bf16), ``seed`` of the purification noise, ``chunk`` images per purifier call.

    ``purifier.precision``: ``bf16`` (autocast for the ε-model on the CPU, the default), ``fp32`` or ``auto``
    (resolved on this CPU and recorded resolved). The flat keys of older configs and flags still read:
    ``diffusion`` and ``sampler`` as ``purifier.<key>``, ``t_star``/``steps`` as the one-round plan
    ``purifier.rounds: "T:S"``, ``amp: bf16|none`` as ``purifier.precision: bf16|fp32`` (and ``precision``).
    """

    split: str = "train"
    purifier: PurifierConfig = field(default_factory=_default_purifier)
    seed: int = 0
    chunk: int = 256

    ALIASES: ClassVar[dict[str, Any]] = {
        "diffusion": nested_alias("purifier.diffusion"), "sampler": nested_alias("purifier.sampler"),
        "precision": nested_alias("purifier.precision"), "t_star": _plan_alias("t_star"),
        "steps": _plan_alias("steps"), "amp": _amp_alias}

    def __post_init__(self) -> None:
        if self.purifier.method == "none":
            raise UsageError("purify-data needs a purifier: purifier.method must be diffpure or freqpure")

    def record(self) -> dict[str, Any]:
        """The settings as a file records them (``precision`` resolved first: see :func:`resolved`).

        A one-round DiffPure with nothing else changed gives the flat dict of the files written before the
        purifier was nested (so they still resume); any other purifier is recorded nested."""
        p = self.purifier
        plan = _one_round(p.rounds)
        plain = PurifierConfig(method="diffpure", diffusion=p.diffusion, rounds=p.rounds, sampler=p.sampler,
                               precision=p.precision)
        if plan is not None and p == plain and p.precision in ("bf16", "fp32"):
            return {"split": self.split, "diffusion": p.diffusion, "t_star": plan[0], "steps": plan[1],
                    "sampler": p.sampler, "seed": self.seed, "chunk": self.chunk,
                    "amp": "bf16" if p.precision == "bf16" else "none"}
        return {"split": self.split, "purifier": to_dict(p), "seed": self.seed, "chunk": self.chunk}

    def resolved(self) -> PurifySplitConfig:
        """The same settings with ``purifier.precision: auto`` replaced by what it means on this CPU."""
        return replace(self, purifier=with_resolved_precision(self.purifier, "cpu"))


def _same_settings(recorded: str | None, config: PurifySplitConfig) -> bool:
    """Whether a file's recorded ``config`` (flat or nested) describes ``config``."""
    if recorded is None:
        return False
    if recorded == json.dumps(config.record(), sort_keys=True):
        return True
    try:
        return to_dict(from_dict(PurifySplitConfig, json.loads(recorded))) == to_dict(config)
    except (ValueError, TypeError):
        return False


def _diffusion(name_or_path: str) -> tuple[Any, Path]:
    """The ε-model (via the registry) and the file its weights came from (hashed into the metadata)."""
    from freqpure.models.bundled import BUNDLED, weights_path
    from freqpure.models.registry import load_diffusion

    path = weights_path(name_or_path) if name_or_path in BUNDLED else Path(name_or_path)
    return load_diffusion(name_or_path), path


def _metadata(config: PurifySplitConfig, weights_sha256: str, n: int, done: int) -> dict[str, str]:
    return {
        "format": FORMAT,
        "config": json.dumps(config.record(), sort_keys=True),
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
    from freqpure.config import build_purifier

    config = config.resolved()  # precision auto -> fp32 | bf16, as recorded

    partial = out.with_name(out.name + ".partial")
    x_u8, y = load_cifar10(config.split, data_dir)
    if limit is not None:
        x_u8, y = x_u8[:limit], y[:limit]
    labels = np.array(y, dtype=np.int64)  # a writable copy
    n = len(labels)
    eps_model, weights = _diffusion(config.purifier.diffusion)
    # bf16 as it always ran: the whole call under CPU autocast (the purifier itself computes in fp32)
    purifier = build_purifier(replace(config.purifier, precision="fp32"), eps_model, seed=config.seed)
    sha = sha256_of(weights)
    meta = _metadata(config, sha, n, 0)

    images = np.zeros((n, *x_u8.shape[1:]), dtype=np.uint8)
    done = 0
    if partial.exists():
        tensors, old = _read(partial)
        if not _same_settings(old.get("config"), config) or {k: old.get(k) for k in ("diffusion_sha256", "n")} != {
            k: meta[k] for k in ("diffusion_sha256", "n")
        }:
            raise UsageError(f"{partial}: was made with other settings or weights; delete it to start over")
        images = tensors["images"].numpy().copy()
        done = int(old["done"])
    out.parent.mkdir(parents=True, exist_ok=True)

    use_bf16 = config.purifier.precision == "bf16"
    chunks = range(done // config.chunk, -(-n // config.chunk))
    start = time.time()
    with tqdm(total=n, initial=done, disable=not progress, desc=f"purify {config.split}", unit="img") as bar:
        for c in chunks:
            lo, hi = c * config.chunk, min(n, (c + 1) * config.chunk)
            x = torch.from_numpy(x_u8[lo:hi].transpose(0, 3, 1, 2).copy()).float().div_(255)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                purified = purifier(x, purify_chunk_stream(config.seed, c)).float()
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

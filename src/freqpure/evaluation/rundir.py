"""Run folders of ``freqpure evaluate``: checked, locked and claimed before the first sample.

:func:`prepare_run_dir` refuses (before anything is written) a missing data set, an unwritable
folder, a folder locked by a live run, another or an unknown run's results, a different config,
records of another config and finished samples without ``--resume``; it returns the run's
:class:`~freqpure.evaluation.lock.RunLock`. :func:`discard_unused_run_dir` removes a folder that a
failed run created and never wrote a sample into. See docs/reliability.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from freqpure._fileio import write_text_atomic
from freqpure.config.io import config_diff, dump_yaml, from_dict, parse_yaml, to_dict
from freqpure.config.purifier import spelled_before
from freqpure.errors import NotFoundError, RunFolderError, UsageError
from freqpure.evaluation.config import EvalConfig
from freqpure.evaluation.lock import LOCK_NAME, RunLock
from freqpure.evaluation.store import (
    SampleStore,
    config_fingerprint,
    numbers_fingerprint,
    without_environment,
)

__all__ = ["RESULT_FILES", "discard_unused_run_dir", "prepare_run_dir", "run_store", "saved_config"]


RESULT_FILES = ("samples.jsonl", "results.json", "results.md", "examples.npz")


def prepare_run_dir(out: Path, cfg: EvalConfig, *, resume: bool, write: bool) -> RunLock | None:
    """Create/check ``out``: writable, not another run's, and (when it holds a run) the same config.

    ``write`` (the main process): lock the folder for this run (returned; release it when done) and
    write config.yaml. Refused, before anything is written: a folder locked by a live process, result
    files without a config.yaml (another run's, or unknown provenance), a different config, records of
    another config, and finished samples without ``resume``.
    """
    _check_data(cfg)  # a missing data set is reported before a run folder is made
    created = not out.exists()
    lock_file_existed, parts_existed = (out / LOCK_NAME).exists(), (out / "parts").exists()
    _check_writable(out)
    lock = None
    try:
        if write:
            lock = RunLock(out).acquire()
            lock.created_folder = created
        _check_run_dir(out, cfg, resume=resume)
        if write and not (out / "config.yaml").exists():
            write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    except BaseException:
        if lock is not None:
            if not lock_file_existed:  # a refused folder keeps nothing of this run (removed while held)
                lock.path.unlink(missing_ok=True)
            lock.release()
        if not parts_existed and not created:
            try:
                (out / "parts").rmdir()  # made by the writability check; only when still empty
            except OSError:
                pass
        raise
    return lock


def discard_unused_run_dir(lock: RunLock | None) -> None:
    """After a failure: remove the run folder if this run created it and wrote no sample (else keep it)."""
    if lock is None or not getattr(lock, "created_folder", False):
        return
    out = lock.folder
    samples = out / "samples.jsonl"
    if samples.exists() and samples.stat().st_size > 0:
        return
    lock.release()
    parts = out / "parts"
    for name in ("config.yaml", "samples.jsonl", LOCK_NAME):
        (out / name).unlink(missing_ok=True)
    for folder in (parts, out):
        try:
            folder.rmdir()  # only when empty: nothing else is ever removed
        except OSError:
            return


def _check_data(cfg: EvalConfig) -> None:
    from freqpure.data import find_cifar10_dir

    d = cfg.data
    if d.dataset == "cifar10":
        find_cifar10_dir(d.data_dir, d.split)
    elif not d.data_dir:
        raise UsageError("data.dataset=imagenet needs data.data_dir (an ImageFolder of the validation set)")
    elif not Path(d.data_dir).expanduser().is_dir():
        raise NotFoundError(f"data.data_dir {d.data_dir} does not exist")


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "parts").mkdir(exist_ok=True)
        probe = out / f".write-test-{time.time_ns()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"results dir {out} is not writable: {err.strerror or err}") from None


def saved_config(out: Path) -> dict[str, Any] | None:
    """The config a run folder's first invocation saved (``config.yaml``) as a full dict, or ``None``.

    Raises :class:`RunFolderError` when the file is not a valid evaluation config."""
    saved_path = out / "config.yaml"
    if not saved_path.exists():
        return None
    try:
        raw = parse_yaml(saved_path.read_text(), str(saved_path)) or {}
        if isinstance(raw, dict) and isinstance(raw.get("purifier", {}), dict):
            raw.setdefault("purifier", {}).setdefault("precision", "fp32")  # runs from before the key: fp32
        return to_dict(from_dict(EvalConfig, raw))
    except ValueError as err:
        raise RunFolderError(f"{saved_path} is not a valid evaluation config ({err}); choose another --out") from None


def run_store(out: Path, cfg: EvalConfig) -> SampleStore:
    """The ``samples.jsonl`` store of run folder ``out`` for ``cfg``: it stamps ``cfg``'s fingerprints on
    new records and accepts records of the same numbers from any device or precision, including those
    written before records named their own (their ``config_sha256`` is that of the saved config.yaml), and
    records written when the config was spelled otherwise (``mode: reference``;
    :func:`~freqpure.config.spelled_before`): their fingerprints are those of the config as written then."""
    saved = saved_config(out)
    legacy = set()
    if saved is not None:
        legacy = {config_fingerprint(c) for c in (saved, spelled_before(saved)) if c is not None}
    d = to_dict(cfg)
    old = spelled_before(d)
    return SampleStore(out / "samples.jsonl", fingerprint=config_fingerprint(d), numbers=numbers_fingerprint(d),
                       legacy=frozenset(legacy),
                       legacy_numbers=frozenset() if old is None else frozenset({numbers_fingerprint(old)}))


def _check_run_dir(out: Path, cfg: EvalConfig, *, resume: bool) -> None:
    saved_path = out / "config.yaml"
    if not saved_path.exists():
        found = [name for name in RESULT_FILES if (out / name).exists()]
        found += sorted(p.name for p in out.glob("sweep-*.jsonl"))  # the eps sweep's records (sanity.py)
        if any((out / "parts").iterdir()):
            found.append("parts/")
        if found:
            raise RunFolderError(
                f"{out} holds {', '.join(found)} but no config.yaml: the results of another or an unknown run; "
                "refusing to reuse or overwrite them — choose another --out"
            )
        return
    saved = saved_config(out)
    # device and precision may change between invocations (each record names its own); nothing else may
    diff = config_diff(without_environment(saved or {}), without_environment(to_dict(cfg)))
    if diff:
        raise RunFolderError(
            f"{out} holds a run with a different config; refusing to "
            f"{'resume' if resume else 'reuse'} it. Differences (saved -> requested):\n  " + "\n  ".join(diff)
        )
    done = len(run_store(out, cfg).load())  # also refuses records of another config
    if done and not resume:
        raise RunFolderError(f"{out} already holds {done} finished samples of this config; pass --resume to "
                             "continue it, or choose a new --out")

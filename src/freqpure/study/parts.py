"""The records of a study's evaluate parts, finished or not: read, summarised, finalised, imported.

A part (``OUT/STAGE/PART``) is an ``freqpure evaluate`` run folder. It counts in the study's tables
as soon as it has records: :func:`part_summary` reads its ``samples.jsonl`` through the run's own
store (fingerprints checked, any device or precision) and says how many of the planned images it
covers, which classes they are (the class-balanced subset is ordered by class, so an unfinished
part covers the first classes only) and on which device/precision they were computed.

:func:`finalize_from_records` writes the ``results.json`` of a part whose every record exists,
without computing anything (the eps sweep of the sanity checks, which would attack anew, is marked
not run). :func:`import_records` merges the part folders of another copy of the study (a GPU
machine's archive) into this one: it adds records this copy lacks, never replaces a file, and
refuses a part of another configuration.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freqpure.config.io import config_diff
from freqpure.errors import RunFolderError, UsageError
from freqpure.evaluation.config import EvalConfig
from freqpure.evaluation.results import Accuracy, Results, SampleRecord, read_results
from freqpure.evaluation.rundir import run_store, saved_config
from freqpure.evaluation.store import SampleStore, without_environment

__all__ = ["PartSummary", "part_records", "part_summary", "finalize_from_records", "import_records",
           "class_span"]


@dataclass(frozen=True)
class PartSummary:
    """What one evaluate part holds: ``n`` of ``planned`` images, their ``labels``, per-metric accuracy.

    ``environments``: images per ``"device/precision"``; ``results``: its results.json when finished.
    """

    name: str
    planned: int
    records: dict[int, SampleRecord]
    environments: dict[str, int]
    results: Results | None = None
    labels: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def complete(self) -> bool:
        return self.n >= self.planned

    def accuracy(self, metric: str) -> Accuracy | None:
        """Accuracy of ``clean``, ``worst case`` or an attack label on the recorded images (None: no record)."""
        values = [r.outcomes()[metric] for r in self.records.values() if metric in r.outcomes()]
        return Accuracy.of(values) if values else None

    def metrics(self) -> list[str]:
        """``clean``, the attack labels in the run's order, ``worst case``."""
        first = next(iter(self.records.values()), None)
        return [] if first is None else list(first.outcomes())


def class_span(labels: list[int]) -> str:
    """``[0, 1, 2, 3]`` → ``'0–3'``; ``[0, 2, 5]`` → ``'0, 2, 5'``; all ten CIFAR-10 classes → ``'all'``."""
    present = sorted(set(labels))
    if not present:
        return "—"
    if present == list(range(10)):
        return "all"
    if present == list(range(present[0], present[-1] + 1)) and len(present) > 2:
        return f"{present[0]}–{present[-1]}"
    return ", ".join(str(c) for c in present)


def part_records(part: Path, cfg: EvalConfig) -> dict[int, SampleRecord]:
    """The part's records by test-image index, each validated (:meth:`SampleRecord.from_dict`).

    Records are read through the run folder's store (:func:`~freqpure.evaluation.rundir.run_store`):
    records of another configuration are refused; a device or precision change is not one."""
    raw = run_store(part, cfg).load()
    return {i: SampleRecord.from_dict(r, f"{part / 'samples.jsonl'}: index {i}") for i, r in sorted(raw.items())}


def _environments(records: dict[int, SampleRecord], saved: dict[str, Any]) -> dict[str, int]:
    from freqpure.evaluation.finalize import record_environments

    return record_environments(list(records.values()), saved)


def part_summary(part: Path, cfg: EvalConfig | None = None, name: str | None = None) -> PartSummary | None:
    """The part's :class:`PartSummary`, or ``None`` when it has no record yet.

    ``cfg``: the study's configuration of the part; a part whose saved config differs from it in anything
    but device and precision is refused. Without ``cfg`` the part's own config.yaml is used."""
    from freqpure.config.io import from_dict, to_dict

    saved = saved_config(part)
    if saved is None:
        return None
    if cfg is None:
        cfg = from_dict(EvalConfig, saved)
    diff = config_diff(without_environment(saved), without_environment(to_dict(cfg)))
    if diff:
        raise RunFolderError(f"{part} holds records of another configuration than the study's "
                             "(saved -> study):\n  " + "\n  ".join(diff))
    records = part_records(part, cfg)
    if not records:
        return None
    results = read_results(part) if (part / "results.json").is_file() else None
    return PartSummary(name or part.name, cfg.data.n, records, _environments(records, saved), results,
                       [r.label for r in records.values()])


def finalize_from_records(part: Path, cfg: EvalConfig) -> Results:
    """Write ``results.json`` (and results.md, examples.npz) of a part whose every record exists, computing
    nothing: the sanity checks' eps sweep is marked not run. Refuses a part with missing records."""
    from freqpure.evaluation.components import load_eval_data
    from freqpure.evaluation.finalize import finalize
    from freqpure.evaluation.lock import RunLock
    from freqpure.evaluation.runner import undefended_keys

    lock = RunLock(part).acquire()  # not while another process runs the part
    try:
        data = load_eval_data(cfg.data)
        return finalize(cfg, part, data, None, undefended_keys(cfg), wall=0.0, resumed=True)
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------
def _unpack(source: Path, scratch: Path) -> Path:
    """``source`` as a folder: a folder as it is, a ``.tar``/``.tar.gz`` archive unpacked into ``scratch``."""
    if source.is_dir():
        return source
    if not source.is_file():
        raise UsageError(f"{source} does not exist: give a study folder or an archive made by scripts/gpu_study.sh")
    try:
        with tarfile.open(source) as tar:
            tar.extractall(scratch, filter="data")  # no links out, no devices, no absolute paths
    except (tarfile.TarError, OSError) as err:
        raise UsageError(f"{source} is not a readable tar archive ({err})") from None
    for root in (scratch, *sorted(p for p in scratch.iterdir() if p.is_dir())):
        if any(root.glob("*/*/config.yaml")):
            return root  # the archive holds STAGE/PART folders, or one folder of them (plus logs)
    return scratch


def import_records(source: str | Path, out: str | Path, *, note: str = "") -> list[dict[str, Any]]:
    """Merge the evaluate parts of ``source`` (a study folder or an archive of one) into study folder ``out``.

    For every ``STAGE/PART`` with a ``config.yaml`` and ``samples.jsonl`` in ``source``: a part ``out``
    lacks is copied; a part ``out`` has must have the same configuration (device and precision aside),
    and only the records of images ``out`` lacks are appended (with the example images of their batches).
    ``results.json`` is never copied (the study writes it from the merged records). Every import is
    logged in ``out/imports.jsonl``. Returns one entry per part: ``{"part", "added", "had"}``.
    """
    out = Path(out)
    log: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = _unpack(Path(source), Path(tmp))
        parts = sorted(p.parent for p in root.glob("*/*/config.yaml") if (p.parent / "samples.jsonl").is_file())
        if not parts:
            raise UsageError(f"{source} holds no study part (STAGE/PART/config.yaml with samples.jsonl)")
        for src in parts:
            rel = src.relative_to(root)
            log.append({"part": str(rel), **_merge_part(src, out / rel)})
    entry = {"imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": str(source),
             "note": note, "parts": log}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "imports.jsonl", "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return log


def _merge_part(src: Path, dst: Path) -> dict[str, int]:
    from freqpure.config.io import from_dict
    from freqpure.evaluation.lock import RunLock

    src_cfg_dict = saved_config(src)
    assert src_cfg_dict is not None  # parts are found by their config.yaml
    dst_cfg = saved_config(dst) if dst.exists() else None
    if dst.exists() and dst_cfg is None:
        raise RunFolderError(f"{dst} exists but holds no config.yaml: not a study part; refusing to write into it")
    if dst_cfg is not None:
        diff = config_diff(without_environment(dst_cfg), without_environment(src_cfg_dict))
        if diff:
            raise RunFolderError(f"{src} and {dst} are parts of different configurations (here -> imported):\n  "
                                 + "\n  ".join(diff))
    src_cfg = from_dict(EvalConfig, src_cfg_dict)
    incoming = {i: _with_own_marks(r, src_cfg_dict) for i, r in run_store(src, src_cfg).load().items()}
    if dst_cfg is None:
        dst.mkdir(parents=True)
        shutil.copy2(src / "config.yaml", dst / "config.yaml")
        if (src / "parts").is_dir():
            shutil.copytree(src / "parts", dst / "parts", ignore=shutil.ignore_patterns("*.tmp*"))
        SampleStore(dst / "samples.jsonl").append([r for _, r in sorted(incoming.items())])
        return {"added": len(incoming), "had": 0}
    lock = RunLock(dst).acquire()  # not while a run appends to it
    try:
        have = run_store(dst, from_dict(EvalConfig, dst_cfg)).load()
        new = [r for i, r in sorted(incoming.items()) if i not in have]
        SampleStore(dst / "samples.jsonl").append(new)  # no fingerprint given: each record keeps its own
        for b in sorted({int(r["batch"]) for r in new if "batch" in r}):
            name = f"examples-b{b:06d}.npz"
            if (src / "parts" / name).is_file() and not (dst / "parts" / name).exists():
                (dst / "parts").mkdir(exist_ok=True)
                shutil.copy2(src / "parts" / name, dst / "parts" / name)
        return {"added": len(new), "had": len(have)}
    finally:
        lock.release()


def _with_own_marks(record: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """A record that names its numbers fingerprint, device and precision: a record written before records
    named them gets those of the config.yaml of the folder it comes from (the config it ran under)."""
    from freqpure.evaluation.store import NUMBERS_KEY, numbers_fingerprint, saved_environment

    if NUMBERS_KEY in record:
        return record
    device, precision = saved_environment(saved)
    return {**record, NUMBERS_KEY: numbers_fingerprint(saved), "device": record.get("device") or device,
            "precision": record.get("precision") or precision}

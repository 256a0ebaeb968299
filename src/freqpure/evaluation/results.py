"""Typed, versioned results of an evaluation: :class:`Results` (``results.json``) and :class:`SampleRecord`
(one line of ``samples.jsonl``), with the math that summarises them.

Every writer builds these dataclasses and every reader (``freqpure table``, ``freqpure report``, the demo,
``benchmarks/paired_runs.py``) goes through :func:`read_results` / :func:`read_samples`, never through
string keys of raw dicts.

Schema versions (``schema_version``):

* **0** — the ad-hoc dicts written before the schema existed (no ``schema_version`` key, no
  ``noise_scheme``). :func:`upgrade_results_v0` / :func:`upgrade_sample_v0` read them: their noise was made
  by the scheme :data:`LEGACY_NOISE_SCHEME` and ``resumed`` moves from ``timings`` to the top level.
* **1** — this module: ``schema_version``, ``noise_scheme`` (:data:`freqpure.samplers.NOISE_SCHEME`
  at the time of the run), ``seed``, ``versions`` (package versions), the full ``config``.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from freqpure.errors import NotFoundError, UsageError

__all__ = ["wilson_interval", "accuracy", "package_versions", "write_json", "render_markdown", "assemble_examples",
           "EXAMPLES_MAX", "SCHEMA_VERSION", "LEGACY_NOISE_SCHEME", "Accuracy", "AttackOutcome", "SampleRecord",
           "Timings", "Results", "read_results", "read_samples", "write_results", "upgrade_results_v0",
           "upgrade_sample_v0"]

EXAMPLES_MAX = 16  # examples.npz holds the first (by subset position) <= 16 samples
SCHEMA_VERSION = 1
# The seed-derivation scheme of every run written before results carried ``noise_scheme`` (schema 0).
LEGACY_NOISE_SCHEME = "linear-v1"


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


# ---------------------------------------------------------------------------------------------
# Dataclasses
# ---------------------------------------------------------------------------------------------
def _require_keys(data: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise UsageError(f"{where}: missing key(s) {missing}")
    return data


def _current_schema(d: dict[str, Any], upgrade_v0: Any, where: str) -> dict[str, Any]:
    """``d`` in schema :data:`SCHEMA_VERSION`: a schema-0 dict goes through ``upgrade_v0``; a newer one is refused."""
    version = d.get("schema_version", 0)
    if version == 0:
        return upgrade_v0(d)
    if version != SCHEMA_VERSION:
        raise UsageError(f"{where}: schema_version {version} is newer than this freqpure reads "
                         f"({SCHEMA_VERSION}); upgrade freqpure")
    return d


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class Accuracy:
    """``correct`` of ``n``; ``accuracy`` = correct / n (NaN for n = 0); ``ci95`` the 95% Wilson interval."""

    correct: int
    n: int
    accuracy: float
    ci95: tuple[float, float]

    @classmethod
    def of(cls, flags: list[bool]) -> Accuracy:
        k, n = int(sum(bool(f) for f in flags)), len(flags)
        return cls(k, n, k / n if n else float("nan"), wilson_interval(k, n))

    @classmethod
    def from_dict(cls, data: Any, where: str = "accuracy") -> Accuracy:
        d = _require_keys(data, ("correct", "n"), where)
        k, n = int(d["correct"]), int(d["n"])
        acc = d.get("accuracy")
        ci = d.get("ci95") or wilson_interval(k, n)
        return cls(k, n, float("nan") if acc is None else float(acc), (float(ci[0]), float(ci[1])))

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "n": self.n, "accuracy": self.accuracy, "ci95": list(self.ci95)}

    def percent(self) -> str:
        """``"84.6% [81.2, 87.4]"``."""
        lo, hi = self.ci95
        return f"{100 * self.accuracy:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def accuracy(flags: list[bool]) -> dict[str, Any]:
    """``{"correct", "n", "accuracy", "ci95": [lo, hi]}`` for a list of per-sample booleans."""
    return Accuracy.of(flags).to_dict()


@dataclass(frozen=True)
class AttackOutcome:
    """One attack on one sample: the defence's prediction on the final adversarial image and its size."""

    pred: int
    correct: bool
    linf: float
    l2: float
    loss: float | None = None
    grad_norm: float | None = None
    seconds: float | None = None  # attack seconds per sample of its batch (None: written before it existed)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> AttackOutcome:
        d = _require_keys(data, ("pred", "correct", "linf", "l2"), where)
        return cls(int(d["pred"]), bool(d["correct"]), float(d["linf"]), float(d["l2"]), d.get("loss"),
                   d.get("grad_norm"), d.get("seconds"))


@dataclass(frozen=True)
class SampleRecord:
    """One line of ``samples.jsonl``: one test image's outcome under the defence.

    ``index``: index into the test split; ``position``: place in the evaluated subset; ``attacks``: by
    attack label; ``robust``: correct on the clean image and under every attack; ``undefended``: the
    bare classifier's correctness under the sanity PGD, by ``"norm-eps"``; ``seconds``: per-sample
    shares of the batch's ``attack``/``judge``/``sanity``/``total`` time.
    """

    index: int
    position: int
    batch: int
    label: int
    clean_pred: int
    clean_correct: bool
    attacks: dict[str, AttackOutcome]
    robust: bool
    undefended: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Any, where: str = "sample") -> SampleRecord:
        d = _require_keys(data, ("index", "label", "clean_pred", "clean_correct", "attacks", "robust"), where)
        d = _current_schema(d, upgrade_sample_v0, where)
        attacks = {str(k): AttackOutcome.from_dict(v, f"{where}.attacks.{k}") for k, v in d["attacks"].items()}
        return cls(int(d["index"]), int(d.get("position", -1)), int(d.get("batch", -1)), int(d["label"]),
                   int(d["clean_pred"]), bool(d["clean_correct"]), attacks, bool(d["robust"]),
                   {str(k): bool(v) for k, v in (d.get("undefended") or {}).items()},
                   {str(k): float(v) for k, v in (d.get("seconds") or {}).items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def outcomes(self) -> dict[str, bool]:
        """Correctness per metric: ``clean``, each attack label, and ``worst case`` (= ``robust``)."""
        out = {"clean": self.clean_correct}
        out.update({label: a.correct for label, a in self.attacks.items()})
        out["worst case"] = self.robust
        return out


def upgrade_sample_v0(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-0 ``samples.jsonl`` record → schema 1 (the fields were already the same; the version is added)."""
    return {**data, "schema_version": SCHEMA_VERSION}


@dataclass(frozen=True)
class Timings:
    """Batch work per sample (seconds) and the wall time of the invocation that finished the run."""

    sample_seconds_total: float
    seconds_per_sample: float
    attack_seconds_per_sample: float
    judge_seconds_per_sample: float
    sanity_seconds_per_sample: float
    per_attack_seconds_per_sample: dict[str, float | None]
    this_invocation_wall_seconds: float

    @classmethod
    def from_dict(cls, data: Any, where: str = "timings") -> Timings:
        d = _require_keys(data, ("sample_seconds_total", "seconds_per_sample"), where)
        nan = float("nan")
        return cls(float(d["sample_seconds_total"]), float(d["seconds_per_sample"]),
                   float(d.get("attack_seconds_per_sample", nan)), float(d.get("judge_seconds_per_sample", nan)),
                   float(d.get("sanity_seconds_per_sample", nan)), dict(d.get("per_attack_seconds_per_sample") or {}),
                   float(d.get("this_invocation_wall_seconds", nan)))


@dataclass(frozen=True)
class Results:
    """``results.json`` of one evaluation run (schema :data:`SCHEMA_VERSION`).

    ``per_attack`` and ``undefended`` keep the order of the config's attacks; ``config`` is the full
    :class:`~freqpure.evaluation.config.EvalConfig` as a dict (:meth:`eval_config` rebuilds it);
    ``protocol`` and ``sanity`` are the texts and checks of :mod:`freqpure.evaluation.runner`;
    ``resumed``: this run was continued from an earlier, interrupted invocation.
    """

    name: str
    defence: str
    seed: int
    n: int
    data: str
    clean: Accuracy
    robust: Accuracy
    per_attack: dict[str, Accuracy]
    config: dict[str, Any]
    timings: Timings
    noise_scheme: str
    versions: dict[str, str]
    undefended: dict[str, Accuracy] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    sanity: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    world_size: int = 1
    resumed: bool = False
    examples: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Any, where: str = "results.json") -> Results:
        d = _require_keys(data, ("config", "clean", "robust", "per_attack", "n"), where)
        d = _current_schema(d, upgrade_results_v0, where)
        d = _require_keys(d, ("name", "defence", "seed", "timings", "noise_scheme"), where)
        return cls(
            name=str(d["name"]), defence=str(d["defence"]), seed=int(d["seed"]), n=int(d["n"]),
            data=str(d.get("data", "")),
            clean=Accuracy.from_dict(d["clean"], f"{where}: clean"),
            robust=Accuracy.from_dict(d["robust"], f"{where}: robust"),
            per_attack={str(k): Accuracy.from_dict(v, f"{where}: per_attack.{k}") for k, v in d["per_attack"].items()},
            config=dict(d["config"]), timings=Timings.from_dict(d["timings"], f"{where}: timings"),
            noise_scheme=str(d["noise_scheme"]),
            versions={str(k): str(v) for k, v in (d.get("versions") or {}).items()},
            undefended={str(k): Accuracy.from_dict(v, f"{where}: undefended.{k}")
                        for k, v in (d.get("undefended") or {}).items()},
            protocol=dict(d.get("protocol") or {}), sanity=dict(d.get("sanity") or {}),
            warnings=[str(w) for w in d.get("warnings") or []], world_size=int(d.get("world_size", 1)),
            resumed=bool(d.get("resumed", False)), examples=dict(d.get("examples") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("clean", "robust"):
            out[key] = getattr(self, key).to_dict()
        out["per_attack"] = {k: v.to_dict() for k, v in self.per_attack.items()}
        out["undefended"] = {k: v.to_dict() for k, v in self.undefended.items()}
        return {"schema_version": out.pop("schema_version"), **out}

    def eval_config(self):
        """The run's :class:`~freqpure.evaluation.config.EvalConfig` (defaults fill keys an older run lacks)."""
        from freqpure.config import from_dict
        from freqpure.evaluation.config import EvalConfig

        return from_dict(EvalConfig, self.config)

    def attacks(self) -> list[tuple[str, dict[str, Any]]]:
        """``(label, attack config dict)`` in the run's order (``per_attack`` keeps the config's order)."""
        return list(zip(self.per_attack, self.config["attacks"], strict=True))


def upgrade_results_v0(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-0 ``results.json`` (the dict written before the schema) → schema 1.

    Adds ``schema_version`` and ``noise_scheme`` (:data:`LEGACY_NOISE_SCHEME`, the only scheme before the
    field existed) and moves ``timings.resumed`` to the top level.
    """
    out = dict(data)
    timings = dict(out.get("timings") or {})
    resumed = bool(timings.pop("resumed", False))
    out.update(schema_version=SCHEMA_VERSION, noise_scheme=out.get("noise_scheme", LEGACY_NOISE_SCHEME),
               timings=timings, resumed=resumed)
    out.setdefault("seed", (out.get("config") or {}).get("seed", 0))
    out.setdefault("name", (out.get("config") or {}).get("name", "eval"))
    out.setdefault("defence", ((out.get("config") or {}).get("purifier") or {}).get("method", "?"))
    return out


# ---------------------------------------------------------------------------------------------
# Reading and writing run directories
# ---------------------------------------------------------------------------------------------
def read_results(run_dir: str | Path) -> Results:
    """The :class:`Results` of ``run_dir/results.json`` (any schema version); a clear error when missing."""
    path = Path(run_dir)
    path = path / "results.json" if path.is_dir() or path.suffix != ".json" else path
    if not path.is_file():
        hint = (" (the run is unfinished: resume it with --resume)"
                if (path.parent / "samples.jsonl").exists() else "")
        raise NotFoundError(f"{path} does not exist{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err}); re-run the evaluation") from None
    if isinstance(data, dict) and not all(k in data for k in ("config", "clean", "robust", "per_attack", "n")):
        missing = [k for k in ("config", "clean", "robust", "per_attack", "n") if k not in data]
        raise UsageError(f"{path} lacks {missing}: not a freqpure evaluate results file")
    return Results.from_dict(data, str(path))


def read_samples(run_dir: str | Path) -> dict[int, SampleRecord]:
    """``{test-image index: SampleRecord}`` of ``run_dir/samples.jsonl`` (finished or still running).

    Uses :class:`~freqpure.evaluation.store.SampleStore` (first record of an index wins; a torn last
    line is skipped); any schema version.
    """
    from freqpure.evaluation.store import SampleStore

    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist: not an evaluation run directory")
    return {i: SampleRecord.from_dict(rec, f"{path}: index {i}") for i, rec in SampleStore(path).load().items()}


def write_results(run_dir: str | Path, results: Results) -> Path:
    """Write ``results.json`` atomically; returns its path."""
    path = Path(run_dir) / "results.json"
    write_json(path, results.to_dict())
    return path


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


def _pct(entry: Accuracy) -> str:
    lo, hi = entry.ci95
    return f"{100 * entry.accuracy:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}] | {entry.correct}/{entry.n}"


def render_markdown(results: Results) -> str:
    """A markdown summary: the accuracy table, the protocol and the sanity checks."""
    cfg = results.config
    lines = [
        f"# {results.name}",
        "",
        f"Defence: `{results.defence}` · classifier `{cfg['classifier']['name']}` · "
        f"n = {results.n} · seed {results.seed} · noise scheme `{results.noise_scheme}`",
        "",
        "| metric | accuracy | 95% CI (Wilson) | correct/n |",
        "|---|---|---|---|",
        f"| clean (standard) | {_pct(results.clean)} |",
        f"| **robust (worst case over attacks)** | {_pct(results.robust)} |",
    ]
    for label, entry in results.per_attack.items():
        lines.append(f"| under `{label}` | {_pct(entry)} |")
    for label, entry in results.undefended.items():
        lines.append(f"| undefended classifier, PGD {label} (sanity) | {_pct(entry)} |")
    lines += ["", "## Protocol", ""]
    for key, value in results.protocol.items():
        if isinstance(value, dict):
            lines.append(f"- **{key}**:")
            lines += [f"  - `{k}`: {v}" for k, v in value.items()]
        else:
            lines.append(f"- **{key}**: {value}")
    if results.sanity:
        lines += ["", "## Sanity checks", ""]
        for key, value in results.sanity.items():
            lines.append(f"- **{key}**: {json.dumps(_clean_json(value))}")
    if results.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in results.warnings]
    t = results.timings
    lines += ["", f"Time: {t.sample_seconds_total:.1f} s of batch work "
                  f"({t.seconds_per_sample:.2f} s/sample), {results.world_size} process(es)."]
    return "\n".join(lines) + "\n"


def assemble_examples(parts_dir: Path, out_path: Path, class_names: list[str], limit: int = EXAMPLES_MAX) -> int:
    """Concatenate per-batch example parts (``examples-b*.npz``) into ``examples.npz`` in subset order.

    Keys: ``clean``, ``adversarial``, ``purified`` (float32 ``[N, C, H, W]`` in [0, 1]), ``labels``,
    ``pred_clean`` (the defence on the clean image), ``pred_adversarial`` (the defence on the adversarial
    image: the verdict that counts), ``pred_purified`` (the bare classifier on the one purification stored in
    ``purified``) (int64 ``[N]``), ``class_names`` (str), ``positions``.
    Returns N.
    """
    parts = sorted(parts_dir.glob("examples-b*.npz"))
    if not parts:
        return 0
    loaded = [dict(np.load(p)) for p in parts]
    common = [k for k in loaded[0] if all(k in d for d in loaded)]  # parts of an older, resumed run may lack some
    merged = {k: np.concatenate([d[k] for d in loaded]) for k in common}
    order = np.argsort(merged["positions"], kind="stable")[:limit]
    out = {k: v[order] for k, v in merged.items()}
    for key in ("clean", "adversarial", "purified"):
        out[key] = out[key].astype(np.float32)
    for key in ("labels", "pred_clean", "pred_adversarial", "pred_purified", "positions"):
        if key in out:  # pred_purified: absent in parts written before it existed
            out[key] = out[key].astype(np.int64)
    out["class_names"] = np.array(class_names, dtype=str)
    tmp = out_path.with_name(out_path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **out)
    os.replace(tmp, out_path)
    return len(order)

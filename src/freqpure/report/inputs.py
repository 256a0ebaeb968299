"""Reading a report's inputs: run, demo and analysis folders, each file checked, every error naming its file."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from freqpure.errors import NotFoundError, UsageError
from freqpure.evaluation.results import Results, SampleRecord, read_run
from freqpure.formatting import DEFENCES, TITLES

__all__ = ["AnalysisData", "RunData", "ReportInputs", "load_run", "RUN_FILES"]

RUN_FILES = ("config.yaml", "results.json", "examples.npz")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise NotFoundError(f"{path}: file not found ({what})")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read as UTF-8 text ({err})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None


def _read_yaml(path: Path) -> tuple[str, Any]:
    text = _read_text(path)
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML ({err})") from None


def _read_png(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    if not data.startswith(_PNG_MAGIC):
        raise UsageError(f"{path}: not a PNG file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as err:  # PIL raises many exception types for corrupt files
        raise UsageError(f"{path}: corrupt PNG ({err})") from None
    return data


def _read_examples(path: Path) -> dict[str, np.ndarray]:
    """Load and validate ``examples.npz`` (see the module docstring)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except ValueError as err:
        raise UsageError(f"{path}: cannot read ({err}); arrays must be numeric or str, not objects") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise UsageError(f"{path}: not a readable .npz archive ({err})") from None
    missing = [k for k in ("clean", "adversarial", "labels") if k not in data]
    if missing:
        raise UsageError(f"{path}: missing key(s) {missing}; has {sorted(data)}")
    clean = data["clean"]
    if clean.ndim != 4 or clean.shape[0] == 0:
        raise UsageError(f"{path}: 'clean' must be [N, C, H, W], got shape {clean.shape}")
    n = clean.shape[0]
    for key in ("adversarial", "purified"):
        if key in data and data[key].shape != clean.shape:
            raise UsageError(f"{path}: {key!r} has shape {data[key].shape}, 'clean' has {clean.shape}")
    for key in ("clean", "adversarial", "purified"):
        if key in data:
            if not np.issubdtype(data[key].dtype, np.floating) or not np.isfinite(data[key]).all():
                raise UsageError(f"{path}: {key!r} must be finite floats in [0, 1], got {data[key].dtype}")
    for key in ("labels", "pred_clean", "pred_adversarial", "pred_purified"):
        if key in data:
            arr = data[key]
            if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
                raise UsageError(f"{path}: {key!r} must be int [N={n}], got {arr.dtype} {arr.shape}")
    if "class_names" in data:
        names = data["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise UsageError(f"{path}: 'class_names' must be a 1-D str array, got {names.dtype} {names.shape}")
    return data


@dataclass
class AnalysisData:
    """``analysis.json`` and the PNG plots it lists (name → bytes)."""

    path: Path
    data: dict[str, Any]
    plots: dict[str, bytes] = field(default_factory=dict)


def _load_analysis(directory: Path) -> AnalysisData | None:
    path = directory / "analysis.json"
    if not path.exists():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object at the top level")
    from freqpure.evaluation.analyze import analysis_in_current_form

    data = analysis_in_current_form(data)  # format 1 (flat purifier keys) reads as format 2
    plots: dict[str, bytes] = {}
    listed = data.get("plots") or {}
    if not isinstance(listed, dict):
        raise UsageError(f"{path}: 'plots' must map names to PNG file names")
    for name, rel in listed.items():
        file = directory / str(rel)
        if Path(str(rel)).is_absolute() or ".." in Path(str(rel)).parts:
            raise UsageError(f"{path}: plot {name!r} must be a file name inside the directory, got {rel!r}")
        plots[str(name)] = _read_png(_require(file, f"plot {name!r} listed in {path.name}"))
    return AnalysisData(path, data, plots)


@dataclass
class RunData:
    """One evaluation run directory, read and validated."""

    path: Path
    results: Results
    config_text: str
    examples: dict[str, np.ndarray] | None
    samples: dict[int, SampleRecord] | None = None

    @property
    def method(self) -> str:
        return self.results.defence

    @property
    def title(self) -> str:
        """``DiffPure`` / ``FreqPure`` / ``no defence``, plus the run name when that is not just the method."""
        base = TITLES.get(self.method, self.method)
        name = self.results.name
        plain = {self.method, f"demo-{self.method}", self.path.name}
        return base if name in plain and self.path.name in (self.method, name) else f"{base} ({name})"


def load_run(directory: str | Path) -> RunData:
    """Read a run directory: ``results.json`` (required, any schema version), ``config.yaml`` (else the config
    stored in results.json is shown), ``examples.npz`` (else no images) and ``samples.jsonl`` (else no
    paired comparison). A file that exists but cannot be read is an error naming it."""
    directory = Path(directory)
    _require(directory / "results.json", "an evaluation run dir holds results.json")
    results, samples = read_run(directory)  # records validated and checked against results.json
    config_path = directory / "config.yaml"
    if config_path.exists():
        config_text, _ = _read_yaml(config_path)
    else:
        config_text = "# from results.json (no config.yaml in the run dir)\n" + yaml.safe_dump(results.config,
                                                                                            sort_keys=False)
    examples_path = directory / "examples.npz"
    examples = _read_examples(examples_path) if examples_path.exists() else None
    return RunData(directory, results, config_text, examples, samples)


def _is_run_dir(directory: Path) -> bool:
    return any((directory / f).exists() for f in RUN_FILES)


def _sub_runs(directory: Path) -> list[Path]:
    subs = [p for p in directory.iterdir() if p.is_dir() and _is_run_dir(p)]
    rank = {n: i for i, n in enumerate(DEFENCES)}
    return sorted(subs, key=lambda p: (rank.get(p.name, len(rank)), p.name))


@dataclass
class ReportInputs:
    """Everything a report shows: ``kind`` is ``"demo"``, ``"run"``, ``"runs"`` or ``"analysis"``."""

    kind: str
    paths: list[Path]
    runs: list[RunData]
    demo: Any = None  # DemoSummary of a demo dir
    grid_png: bytes | None = None  # demo's grid.png
    analysis: AnalysisData | None = None

    @classmethod
    def read(cls, directories: str | Path | Sequence[str | Path]) -> ReportInputs:
        if isinstance(directories, str | Path):
            directories = [directories]
        paths = [Path(d) for d in directories]
        if not paths:
            raise UsageError("no directory given")
        for d in paths:
            if not d.is_dir():
                raise NotFoundError(f"{d}: not a directory (expected a run, demo or analysis dir)")
        if len(paths) > 1:
            return cls("runs", paths, [load_run(p) for p in paths])
        directory = paths[0]
        subs = _sub_runs(directory)
        analysis = _load_analysis(directory)
        if subs:
            from freqpure.evaluation.demo_summary import DemoSummary

            summary_path = _require(directory / "results.json", "a demo dir holds a top-level results.json")
            demo = DemoSummary.from_dict(_read_json(summary_path), str(summary_path))
            grid = directory / "grid.png"
            return cls("demo", paths, [load_run(p) for p in subs], demo, _read_png(grid) if grid.exists() else None,
                       analysis)
        if _is_run_dir(directory):
            return cls("run", paths, [load_run(directory)], analysis=analysis)
        if analysis is not None:
            return cls("analysis", paths, [], analysis=analysis)
        raise NotFoundError(
            f"{directory}: nothing to report: expected config.yaml, results.json and examples.npz (a run dir), "
            f"sub-directories {', '.join(DEFENCES)} holding run dirs (a demo dir), or analysis.json"
        )

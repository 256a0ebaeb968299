"""``OUT/results.json`` of ``freqpure demo``: the typed record the demo writes and the report reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from freqpure.errors import UsageError
from freqpure.evaluation.results import SCHEMA_VERSION, package_versions
from freqpure.noise import NOISE_SCHEME

__all__ = ["DemoSummary"]


@dataclass
class DemoSummary:
    """``OUT/results.json`` of a demo: the settings, where each defence's run is, time estimate and wall time."""

    settings: dict[str, Any]
    runs: dict[str, str]  # defence -> run directory relative to OUT
    estimate_seconds: float | None
    wall_seconds: float
    threads: int
    machine: str = ""  # processor | threads | device, as the estimate's calibration keys it
    load_average: str = ""  # at the end of the run
    grid: str = "grid.png"
    noise_scheme: str = NOISE_SCHEME
    versions: dict[str, str] = field(default_factory=package_versions)
    schema_version: int = SCHEMA_VERSION
    kind: str = "freqpure-demo"

    @classmethod
    def from_dict(cls, data: Any, where: str = "demo results.json") -> DemoSummary:
        if not isinstance(data, dict) or data.get("kind") != "freqpure-demo" or "runs" not in data:
            raise UsageError(f"{where}: not a demo summary (written by freqpure demo)")
        return cls(settings=dict(data["settings"]), runs={str(k): str(v) for k, v in data["runs"].items()},
                   estimate_seconds=data.get("estimate_seconds"), wall_seconds=float(data.get("wall_seconds", 0.0)),
                   threads=int(data.get("threads", 1)), machine=str(data.get("machine", "")),
                   load_average=str(data.get("load_average", "")), grid=str(data.get("grid", "grid.png")),
                   noise_scheme=str(data.get("noise_scheme", "")), versions=dict(data.get("versions") or {}),
                   schema_version=int(data.get("schema_version", SCHEMA_VERSION)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

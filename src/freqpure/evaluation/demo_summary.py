"""``OUT/results.json`` of ``freqpure demo``: the typed record the demo writes and the report reads.

Its ``settings`` are the demo's :class:`~freqpure.evaluation.demo.DemoSettings`, the purifier nested under
``settings.purifier`` (a :class:`~freqpure.config.PurifierConfig`). Files written before that held the purifier's
keys flat (``rounds``, ``radius``: both radii, ``diffusion``); :func:`nested_settings` reads them in today's form
(and ``mode: reference``, the old name of ``official``), so every reader sees one layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from freqpure.config.io import nested_alias, rename_keys
from freqpure.errors import UsageError
from freqpure.evaluation.results import SCHEMA_VERSION, package_versions
from freqpure.noise import NOISE_SCHEME
from freqpure.presets import current_value

__all__ = ["DemoSummary", "FLAT_PURIFIER_KEYS", "nested_settings"]

# the demo's purifier keys before they were nested under purifier (radius: both radii); DemoSettings reads them too
FLAT_PURIFIER_KEYS: dict[str, Any] = {"rounds": nested_alias("purifier.rounds"),
                                      "diffusion": nested_alias("purifier.diffusion"),
                                      "radius": nested_alias("purifier.amp_radius", "purifier.phase_radius")}


def nested_settings(settings: dict[str, Any], flat: dict[str, Any] | None = None) -> dict[str, Any]:
    """``settings`` (a command's recorded settings) in today's layout: the old flat purifier keys ``flat`` (default
    :data:`FLAT_PURIFIER_KEYS`) moved under ``purifier``, renamed values (``mode: reference``) in today's spelling.
    Settings already in today's layout come back unchanged (a copy)."""
    out = rename_keys(FLAT_PURIFIER_KEYS if flat is None else flat, dict(settings))
    if isinstance(out.get("purifier"), dict):
        out["purifier"] = {k: current_value(k, v) for k, v in out["purifier"].items()}
    return out


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
        return cls(settings=nested_settings(dict(data["settings"])),
                   runs={str(k): str(v) for k, v in data["runs"].items()},
                   estimate_seconds=data.get("estimate_seconds"), wall_seconds=float(data.get("wall_seconds", 0.0)),
                   threads=int(data.get("threads", 1)), machine=str(data.get("machine", "")),
                   load_average=str(data.get("load_average", "")), grid=str(data.get("grid", "grid.png")),
                   noise_scheme=str(data.get("noise_scheme", "")), versions=dict(data.get("versions") or {}),
                   schema_version=int(data.get("schema_version", SCHEMA_VERSION)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

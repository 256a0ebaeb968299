"""Running a study: choose parts, run or resume them (locked, timed), write the tables and the verdict."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from freqpure._fileio import write_json_atomic
from freqpure.config.io import config_diff, dump_yaml, from_dict, to_dict
from freqpure.errors import UsageError
from freqpure.evaluation.clean import check_clean_dir, read_mapping_file
from freqpure.evaluation.rundir import saved_config
from freqpure.study.clean import clean_run_config, run_clean_setting
from freqpure.study.config import RunConfig, StudyConfig
from freqpure.study.tables import clean_vs_robust_plot, clean_vs_robust_points, stage_markdown


def _eval_config(run: RunConfig, study: StudyConfig, base_dir: Path):
    from freqpure.evaluation.config import load_eval_config

    path = (base_dir / run.config) if run.config else None
    if path is None or not path.is_file():
        raise UsageError(f"run {run.name!r}: evaluation config {run.config!r} not found (looked in {base_dir})")
    cfg = load_eval_config(path, list(run.set))
    models = [f"classifier.name={study.classifier}", f"device={study.device}"]
    if cfg.purifier.method != "none":
        models.append(f"purifier.diffusion={study.diffusion}")
    if study.data_dir:
        models.append(f"data.data_dir={study.data_dir}")
    from freqpure.config.io import apply_overrides

    return apply_overrides(cfg, models)


def _record_time(folder: Path, wall: float, cpu: float, *, finished: bool = True, entry: int | None = None) -> int:
    """Add (or, with ``entry``, update) one invocation in ``folder/timing.json``; returns its entry number.

    ``finished: false`` marks an invocation still working, or one killed after its last update."""
    import fcntl

    path = folder / "timing.json"
    with open(folder / ".timing.lock", "a") as guard:  # parallel parts of one stage share the file
        fcntl.flock(guard, fcntl.LOCK_EX)
        return _update_timing(path, wall, cpu, finished, entry)


def _update_timing(path: Path, wall: float, cpu: float, finished: bool, entry: int | None) -> int:
    timing = read_mapping_file(path) if path.is_file() else {"invocations": []}
    if not isinstance(timing.get("invocations"), list):
        raise UsageError(f"{path} has no list of invocations: it was edited; move it aside (the study starts a "
                         "new one)")
    item = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_seconds": wall, "cpu_seconds": cpu,
            "threads": torch.get_num_threads(), "completed": finished}
    if entry is None:
        timing["invocations"].append(item)
        entry = len(timing["invocations"]) - 1
    else:
        timing["invocations"][entry] = item
    timing["wall_hours_total"] = sum(i["wall_seconds"] for i in timing["invocations"]) / 3600
    timing["cpu_hours_total"] = sum(i["cpu_seconds"] for i in timing["invocations"]) / 3600
    write_json_atomic(path, timing, fsync=True)
    return entry


def _select(study: StudyConfig, stages: list[str] | None, parts: list[str] | None) -> dict[str, set[str] | None]:
    """The parts to run by stage: ``{stage: None}`` = all of the stage's parts; stages absent are only tabulated.

    ``stages``: stage names; ``parts``: ``STAGE/PART`` names. Unknown names are refused."""
    names = {s.name: [p.name for p in (s.settings if s.kind == "clean" else s.runs)] for s in study.stages}
    unknown = sorted(set(stages or []) - set(names))
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; the study has {list(names)}")
    if not stages and not parts:
        return {name: None for name in names}
    chosen: dict[str, set[str] | None] = {name: None for name in stages or []}
    for item in parts or []:
        stage, _, part = item.partition("/")
        if stage not in names or part not in names[stage]:
            raise UsageError(f"unknown part {item!r}: give STAGE/PART, e.g. "
                             f"{next(iter(names))}/{names[next(iter(names))][0]}")
        if chosen.get(stage, set()) is not None:
            chosen.setdefault(stage, set()).add(part)  # type: ignore[union-attr]
    return chosen


class _Clock:
    """The wall and CPU time of this invocation in a stage's timing.json, kept current while it works
    (rewritten every ``interval`` seconds), so a killed invocation's time is counted up to its last beat."""

    def __init__(self, folder: Path, interval: float = 60.0) -> None:
        import threading

        self.folder, self.interval = folder, interval
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.entry: int | None = None
        self._lock = threading.Lock()  # the beat and the final write never interleave
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import threading

        if self.entry is not None:
            return
        self.entry = _record_time(self.folder, 0.0, 0.0, finished=False)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(finished=False)

    def _write(self, finished: bool) -> None:
        with self._lock:
            if self.entry is None:
                return
            _record_time(self.folder, time.perf_counter() - self.wall0, time.process_time() - self.cpu0,
                         finished=finished, entry=self.entry)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._write(finished=True)


def _finish_from_records(part: Path) -> bool:
    """Write results.json of a part whose every record exists but that has none (records made elsewhere,
    or a run stopped between its last batch and its summary), computing nothing. True if written."""
    from freqpure.study.parts import finalize_from_records, part_summary

    if (part / "results.json").is_file() or not (part / "config.yaml").is_file():
        return False
    summary = part_summary(part)
    if summary is None or not summary.complete:
        return False
    from freqpure.errors import RunFolderError
    from freqpure.evaluation.config import EvalConfig

    try:
        finalize_from_records(part, from_dict(EvalConfig, saved_config(part) or {}))
    except RunFolderError:  # another process holds the part (and will summarise it)
        return False
    return True


def run_study(study: StudyConfig, out: str | Path, *, base_dir: str | Path = ".", stages: list[str] | None = None,
              parts: list[str] | None = None, progress: bool = True, execute: bool = True) -> Path:
    """Run (or resume) the stages of ``study`` into ``out``; returns the path of ``study.md``.

    ``stages``: names of the stages to run; ``parts``: ``STAGE/PART`` names to run (default: everything);
    the others are only tabulated. ``execute=False``: run nothing, only rewrite the tables (and write the
    results.json of parts whose every record exists). ``base_dir``: the folder evaluation-config paths of
    ``runs`` are relative to (the study config's).
    """
    import freqpure
    from freqpure.evaluation.distributed import resolve_device
    from freqpure.evaluation.runner import evaluate

    out, base_dir = Path(out), Path(base_dir)
    chosen = _select(study, stages, parts)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "study.yaml"
    if not saved.exists():
        saved.write_text(dump_yaml(study))
    device = resolve_device(study.device)
    models: dict[str, Any] = {}

    def shared_models():
        if not models:
            classifier = freqpure.load_classifier(study.classifier, device=device)
            models["classifier"] = classifier.eval().requires_grad_(False)
            models["eps"] = freqpure.load_diffusion(study.diffusion, device=device).eval().requires_grad_(False)
        return models["classifier"], models["eps"]

    for stage in study.stages:
        folder = out / stage.name
        if stage.kind == "evaluate" and folder.is_dir():
            for run in stage.runs:  # records made elsewhere (imported) get their results.json here
                _finish_from_records(folder / run.name)
        if not execute or stage.name not in chosen:
            if folder.is_dir():
                (folder / "stage.md").write_text(stage_markdown(stage, folder))
            continue
        wanted = chosen[stage.name]
        folder.mkdir(parents=True, exist_ok=True)
        clock = _Clock(folder)
        try:
            if stage.kind == "clean":
                for setting in stage.settings:
                    if wanted is not None and setting.name not in wanted:
                        continue
                    part = folder / setting.name
                    if (part / "summary.json").is_file():
                        check_clean_dir(part, clean_run_config(stage, setting, study), write=False)
                        continue
                    classifier, eps_model = shared_models()
                    clock.start()  # count the time of an interrupted part too
                    # a clean run locks its folder itself: two studies never write one part
                    run_clean_setting(stage, setting, study, part, classifier=classifier, eps_model=eps_model,
                                      device=device, progress=progress)
            else:
                for run in stage.runs:
                    if wanted is not None and run.name not in wanted:
                        continue
                    cfg = _eval_config(run, study, base_dir)
                    part = folder / run.name
                    if (part / "results.json").is_file():
                        from freqpure.evaluation.config import EvalConfig
                        from freqpure.evaluation.store import without_environment

                        done = json.loads((part / "results.json").read_text())
                        if not config_diff(without_environment(to_dict(from_dict(EvalConfig, done["config"]))),
                                           without_environment(to_dict(cfg))):
                            continue
                    clock.start()
                    evaluate(cfg, part, resume=True, progress=progress)
        finally:
            clock.stop()
            (folder / "stage.md").write_text(stage_markdown(stage, folder))
    text = [f"# {study.name}", "", f"Models: classifier `{study.classifier}`, diffusion `{study.diffusion}`; "
            f"device {study.device}; seed {study.seed}.", ""]
    text += [stage_markdown(s, out / s.name) for s in study.stages]
    from freqpure.study.verdict import PRIMARY, verdict_markdown

    if any(s.name == PRIMARY[0] for s in study.stages):  # the study the rule was written for
        text += ["## Verdict by the pre-registered rule", "", verdict_markdown(out), ""]
    points = clean_vs_robust_points(study, out)
    if points:
        try:
            clean_vs_robust_plot(points, out / "clean-vs-robust.png")
            text.append("![clean vs robust](clean-vs-robust.png)\n")
        except ImportError:  # matplotlib is optional
            pass
    (out / "study.md").write_text("\n".join(text))
    return out / "study.md"

"""Hostile inputs against ``freqpure study`` (issue #23's study group): one clear error, nothing counted that
should have been refused, nothing lost. The clean-stage records are the committed n = 64 pilot's."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from freqpure.cli.main import main
from freqpure.config import from_dict
from freqpure.errors import RunFolderError, UsageError
from freqpure.evaluation.clean import check_clean_dir, read_clean_records
from freqpure.evaluation.lock import RunLock
from freqpure.study import StudyConfig, load_study_config, run_study, stage_markdown
from freqpure.study.clean import clean_run_config
from freqpure.study.run import _Clock

REPO = Path(__file__).resolve().parents[1]
PILOT = REPO / "benchmarks" / "results" / "study-pilot-n64"


@pytest.fixture
def pilot(tmp_path: Path) -> tuple[StudyConfig, Path]:
    """A copy of the pilot study folder and its config."""
    out = tmp_path / "pilot"
    shutil.copytree(PILOT, out)
    return load_study_config(PILOT / "pilot-study-cifar10.yaml"), out


def test_a_study_without_stages_or_with_bad_settings_is_refused(tmp_path, capsys):
    with pytest.raises(UsageError, match="lists no stages"):
        from_dict(StudyConfig, {"name": "empty"})
    assert main(["study", "--out", str(tmp_path / "o")]) == 2  # no --config: nothing to run is an error
    assert "lists no stages" in capsys.readouterr().err
    (tmp_path / "empty.yaml").write_text("")
    assert main(["study", "--config", str(tmp_path / "empty.yaml"), "--out", str(tmp_path / "o")]) == 2
    stage = {"name": "s", "kind": "clean", "settings": [{"name": "a"}]}
    for device in ("bogus", "meta", "mps"):
        with pytest.raises(UsageError, match="not supported"):
            from_dict(StudyConfig, {"device": device, "stages": [stage]})
    with pytest.raises(UsageError, match="bands must be finite"):
        from_dict(StudyConfig, {"stages": [{**stage, "bands": [float("nan"), 8]}]})
    assert not (tmp_path / "o").exists()


def test_records_without_their_config_are_not_counted_for_another(pilot):
    cfg, out = pilot
    stage = cfg.stages[0]
    part = out / stage.name / "diffpure-100-5"
    (part / "config.yaml").unlink()
    (part / "summary.json").unlink()
    setting = next(s for s in stage.settings if s.name == "diffpure-100-5")
    with pytest.raises(UsageError, match="no config.yaml"):
        check_clean_dir(part, clean_run_config(stage, setting, cfg))
    assert (part / "samples.jsonl").stat().st_size > 0  # nothing removed


@pytest.mark.parametrize("damage", ["correct-string", "correct-contradicts", "extra-lines", "label-missing"])
def test_edited_clean_records_are_refused_with_file_and_index(pilot, damage):
    cfg, out = pilot
    part = out / cfg.stages[0].name / "diffpure-v2"
    name = "vote.jsonl" if damage == "extra-lines" else "samples.jsonl"
    lines = [json.loads(ln) for ln in (part / name).read_text().splitlines()]
    if damage == "correct-string":
        lines[0]["correct"] = "false"
    elif damage == "correct-contradicts":
        lines[0]["correct"] = not lines[0]["correct"]
    elif damage == "extra-lines":
        lines += [{**lines[0], "index": 90_000 + k} for k in range(3)]
    else:
        del lines[0]["label"]
    (part / name).write_text("".join(json.dumps(r) + "\n" for r in lines))
    limit = cfg.stages[0].vote_n if name == "vote.jsonl" else cfg.stages[0].n
    with pytest.raises(UsageError, match=str(part / name).replace("\\", "\\\\")):
        read_clean_records(part, name, limit)


@pytest.mark.parametrize("file", ["summary.json", "timing.json", "config.yaml"])
@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "\xff\xfe"])
def test_damaged_study_files_give_one_clear_error(pilot, file, content):
    cfg, out = pilot
    stage = cfg.stages[0]
    folder = out / stage.name
    path = folder / ("diffpure-v2/" + file if file != "timing.json" else file)
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(UsageError, match="restore|move it aside|choose another"):
        if file == "config.yaml":
            setting = next(s for s in stage.settings if s.name == "diffpure-v2")
            check_clean_dir(path.parent, clean_run_config(stage, setting, cfg))
        else:
            stage_markdown(stage, folder)


def test_a_part_another_study_is_writing_is_refused(pilot):
    cfg, out = pilot
    stage = cfg.stages[0]
    part = out / stage.name / "freqpure-official-v2"  # the pilot's unfinished part: a study would resume it
    lock = RunLock(part).acquire()
    try:
        before = (part / "samples.jsonl").read_bytes()
        with pytest.raises(RunFolderError, match="in use by another freqpure run"):
            run_study(cfg, out, stages=[stage.name], progress=False)
        assert (part / "samples.jsonl").read_bytes() == before
    finally:
        lock.release()


def test_a_killed_invocation_keeps_its_time_in_timing_json(tmp_path):
    clock = _Clock(tmp_path, interval=0.05)
    clock.start()
    time.sleep(0.3)  # the process is "killed" here: stop() is never called; only the beats have written
    clock._stop.set()
    clock._thread.join()
    timing = json.loads((tmp_path / "timing.json").read_text())
    (entry,) = timing["invocations"]
    assert entry["completed"] is False and entry["wall_seconds"] >= 0.2 and timing["wall_hours_total"] > 0
    clock2 = _Clock(tmp_path, interval=60)
    clock2.start()
    clock2.stop()
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert [i["completed"] for i in timing["invocations"]] == [False, True]
    assert yaml.safe_load((tmp_path / "timing.json").read_text())  # still one valid document


def test_an_absurd_thread_count_from_the_environment_is_one_clear_error(monkeypatch):
    import torch

    from freqpure.runtime import configure_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("FREQPURE_THREADS", "100000")
    with pytest.raises(UsageError, match="threads must be at most"):
        configure_threads()
    assert torch.get_num_threads() == before  # nothing was set


@pytest.mark.parametrize("args, message", [
    (["--import", "/nonexistent/records.tar.gz"], "does not exist"),
    (["--part", "stage4-honest-protocol/nope"], "unknown part"),
    (["--part", "nostage"], "unknown part"),
])
def test_study_options_with_bad_values_give_one_line(tmp_path, capsys, args, message):
    code = main(["study", "--config", str(REPO / "configs" / "study-cifar10.yaml"), "--out", str(tmp_path / "o"),
                 "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_import_of_a_file_that_is_not_an_archive_is_refused_and_changes_nothing(tmp_path, capsys):
    bogus = tmp_path / "records.tar.gz"
    bogus.write_bytes(b"not a tar")
    out = tmp_path / "o"
    code = main(["study", "--config", str(REPO / "configs" / "study-cifar10.yaml"), "--out", str(out),
                 "--import", str(bogus), "--no-progress"])
    assert code == 2 and "not a readable tar archive" in capsys.readouterr().err
    assert bogus.read_bytes() == b"not a tar" and not (out / "imports.jsonl").exists()

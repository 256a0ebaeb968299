"""Outputs written before the purifier was nested (issue #22) still read: ``freqpure analyze``'s analysis.json
(format 1: ``settings.all`` flat) and ``freqpure demo``'s results.json (``settings`` flat), with ``mode: reference``
(the old name of ``official``). Every reader goes through the normalisers at the read edge."""

from __future__ import annotations

import html
import json
from pathlib import Path

from freqpure.config import from_dict, to_dict
from freqpure.evaluation.analyze import ANALYSIS_FORMAT, AnalyzeSettings, analysis_in_current_form
from freqpure.evaluation.demo import DemoSettings
from freqpure.evaluation.demo_summary import DemoSummary, nested_settings

# analyze's settings.all as written before the nesting (AnalyzeSettings was flat), an ablation in the old spelling
OLD_ANALYZE_ALL = {"n": 8, "seed": 0, "data_dir": None, "classifier": "cifar10-resnet-small",
                   "diffusion": "cifar10-ddpm-small", "eps": 8 / 255, "attack_steps": 2, "step_size": 2 / 255,
                   "random_start": True, "rounds": "100:5", "sampler": "ddpm", "amp_radius": 3.0,
                   "phase_radius": 4.0, "delta": 0.3, "mode": "reference", "reference": "input",
                   "include_clean": False, "max_radius": None, "ci": "normal", "n_boot": 100, "amp_floor": 1e-3,
                   "plots": False, "batch_size": 8}
# the demo's settings as written before the nesting (DemoSettings was flat)
OLD_DEMO_SETTINGS = {"n": 3, "attack_steps": 1, "eot": 1, "ensemble": 1, "eps": "8/255", "rounds": "100:2",
                     "radius": 3.0, "gradient": "full", "surrogate_rounds": None, "batch_size": 8, "sweep": False,
                     "seed": 0, "classifier": "cifar10-resnet-small", "diffusion": "cifar10-ddpm-small",
                     "data_dir": None, "steps": None}


def test_old_analysis_settings_read_nested_and_in_todays_spelling() -> None:
    old = {"format": "freqpure-analysis/1", "settings": {
        "all": OLD_ANALYZE_ALL, "purifiers": {"freqpure": {"method": "freqpure", "mode": "reference"}}}}
    now = analysis_in_current_form(old)
    assert now["format"] == ANALYSIS_FORMAT == "freqpure-analysis/2"
    purifier = now["settings"]["all"]["purifier"]
    assert (purifier["rounds"], purifier["amp_radius"], purifier["phase_radius"], purifier["mode"]) == \
        ("100:5", 3.0, 4.0, "official")
    assert "rounds" not in now["settings"]["all"] and now["settings"]["purifiers"]["freqpure"]["mode"] == "official"
    # the same settings as today's AnalyzeSettings write them: the normalised old block equals the new one
    new_all = to_dict(from_dict(AnalyzeSettings, OLD_ANALYZE_ALL))
    assert to_dict(from_dict(AnalyzeSettings, now["settings"]["all"])) == new_all
    assert analysis_in_current_form({"format": ANALYSIS_FORMAT, "settings": {"all": new_all}})["settings"]["all"] \
        == new_all  # today's form comes back unchanged
    assert old["settings"]["all"] is OLD_ANALYZE_ALL and "rounds" in OLD_ANALYZE_ALL  # the input is not changed


def test_the_report_reads_an_old_analysis_json(tmp_path: Path) -> None:
    from freqpure.report import write_report

    (tmp_path / "analysis.json").write_text(json.dumps({
        "format": "freqpure-analysis/1", "settings": {"all": OLD_ANALYZE_ALL}, "summary": {}, "targets": {},
        "plots": {}}))
    page = html.unescape(write_report(tmp_path).read_text())
    assert '"purifier"' in page and '"official"' in page and '"reference": "input"' in page


def test_old_demo_settings_read_nested() -> None:
    summary = {"settings": OLD_DEMO_SETTINGS, "runs": {"none": "none"}, "estimate_seconds": None,
               "wall_seconds": 1.0, "threads": 1, "kind": "freqpure-demo"}
    settings = DemoSummary.from_dict(summary).settings
    assert {k: settings["purifier"][k] for k in ("rounds", "amp_radius", "phase_radius", "diffusion")} == \
        {"rounds": "100:2", "amp_radius": 3.0, "phase_radius": 3.0, "diffusion": "cifar10-ddpm-small"}
    assert not {"rounds", "radius", "diffusion"} & set(settings)
    # today's results.json settings (asdict of DemoSettings) come back as written
    from dataclasses import asdict

    new = asdict(from_dict(DemoSettings, OLD_DEMO_SETTINGS))
    assert new["purifier"]["amp_radius"] == 3.0 and new["purifier"]["rounds"] == "100:2"  # on bundled-table
    assert nested_settings(new) == new
    # an old flat key changes only what it names: the rest of the purifier stays the demo's preset (bundled-table)
    assert (from_dict(DemoSettings, {"rounds": "100:3"}).purifier.amp_radius,
            from_dict(DemoSettings, {"purifier": {"rounds": "100:3"}}).purifier.delta) == (3.0, 0.3)
    assert DemoSummary.from_dict({**summary, "settings": new}).settings == new

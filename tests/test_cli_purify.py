"""``freqpure purify`` end to end on real CIFAR-10 images with the bundled diffusion model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freqpure.cli.main import main

FAST = ["--t-start", "20", "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, real_images) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    arrays = (real_images[:4].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    (folder / "sub").mkdir()
    Image.fromarray(arrays[0]).save(folder / "a.png")
    Image.fromarray(arrays[1]).save(folder / "b.jpg", quality=95)
    Image.fromarray(arrays[2]).save(folder / "sub" / "c.png")
    Image.fromarray(arrays[3]).save(folder / "sub" / "d.JPEG")
    return folder


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_purify_folder_writes_pngs_and_manifest(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["purify", str(image_dir), "--out", str(out), "--seed", "3", "--delta", "0.2", *FAST]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a.png", "b.png", "sub/c.png", "sub/d.png"]
    for name in written:
        assert read(out / name).shape == (32, 32, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["n_images"] == 4
    assert manifest["settings"]["delta"] == 0.2 and manifest["settings"]["rounds"] == "20:2"
    assert manifest["settings"]["method"] == "freqpure" and manifest["model"] == "cifar10-ddpm-small"
    assert manifest["environment"]["torch"] and manifest["environment"]["freqpure"]
    assert manifest["timings"]["total_seconds"] > 0
    assert "purified 4 image(s)" in capsys.readouterr().out


def test_purified_images_stay_close_to_the_input_and_are_reproducible(image_dir, tmp_path):
    runs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        main(["purify", str(image_dir / "a.png"), "--out", str(out), "--seed", "5", *FAST])
        runs.append(read(out / "a.png").astype(float))
    np.testing.assert_array_equal(runs[0], runs[1])
    original = read(image_dir / "a.png").astype(float)
    # FreqPure at t* = 20 keeps the content: small change, but a change
    assert 0 < np.abs(runs[0] - original).mean() < 20


def test_diffpure_and_config_file(image_dir, tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("method: diffpure\nrounds: '10:2'\n")
    out = tmp_path / "dp"
    args = ["purify", str(image_dir / "a.png"), "--out", str(out), "--config", str(config), "--device", "cpu"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["method"] == "diffpure" and manifest["settings"]["rounds"] == "10:2"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--method", "magic"], "purifier.method must be"),
        (["--t-start", "20"], "--t-start and --steps go together"),
        (["--amp-radius", "40"], "amp_radius=40.0 is larger than the 32x32 spectrum"),
    ],
)
def test_bad_settings_give_one_clear_line(image_dir, tmp_path, capsys, extra, match):
    args = ["purify", str(image_dir / "a.png"), "--out", str(tmp_path / "o"), "--device", "cpu", *extra]
    if "--t-start" not in extra:
        args += ["--t-start", "20", "--steps", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_bad_inputs_give_one_clear_line(tmp_path, capsys, image_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((48, 40, 3), dtype=np.uint8)).save(big)
    unknown_key = tmp_path / "bad.yaml"
    unknown_key.write_text("deltaa: 0.3\n")
    cases = [
        ([str(empty)], "no PNG/JPEG images found in folder"),
        ([str(tmp_path / "missing.png")], "input not found"),
        ([str(broken)], "cannot read image"),
        ([str(big)], "takes 32x32 images; pass --resize"),
        ([str(image_dir / "a.png"), "--config", str(unknown_key)], "unknown config key(s): config.deltaa"),
    ]
    for args, match in cases:
        assert main(["purify", *args, "--out", str(tmp_path / "o"), *FAST]) == 2, args
        err = capsys.readouterr().err
        assert match in err, (match, err)
    # --resize makes the odd-sized image acceptable
    assert main(["purify", str(big), "--out", str(tmp_path / "r"), "--resize", *FAST]) == 0
    assert read(tmp_path / "r" / "big.png").shape == (32, 32, 3)

"""``freqpure purify`` end to end on real CIFAR-10 images with the bundled diffusion model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freqpure.cli.main import main

FAST = ["--t-star", "20", "--steps", "2", "--device", "cpu"]


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
        (["--t-star", "20"], "--t-star needs --steps too"),
        (["--amp-radius", "40"], "amp_radius=40.0 is larger than the 32x32 spectrum"),
    ],
)
def test_bad_settings_give_one_clear_line(image_dir, tmp_path, capsys, extra, match):
    args = ["purify", str(image_dir / "a.png"), "--out", str(tmp_path / "o"), "--device", "cpu", *extra]
    if "--t-star" not in extra:
        args += ["--t-star", "20", "--steps", "2"]
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
        ([str(image_dir / "a.png"), "--config", str(unknown_key)], "unknown config key(s): purifier.deltaa"),
    ]
    for args, match in cases:
        assert main(["purify", *args, "--out", str(tmp_path / "o"), *FAST]) == 2, args
        err = capsys.readouterr().err
        assert match in err, (match, err)
    # --resize makes the odd-sized image acceptable
    assert main(["purify", str(big), "--out", str(tmp_path / "r"), "--resize", *FAST]) == 0
    assert read(tmp_path / "r" / "big.png").shape == (32, 32, 3)


# ------------------------------------------------------------------------------------------------
# Never lose a file; nothing converted or left behind silently (issue 11 items 1, 6, 9; issue 16 item 5)
# ------------------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def inputs(tmp_path, real_images) -> Path:
    folder = tmp_path / "d"
    folder.mkdir()
    arrays = (real_images[:2].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arrays[0]).save(folder / "a.png")
    Image.fromarray(arrays[1]).save(folder / "b.png")
    return folder


def test_purify_refuses_to_write_over_its_inputs(inputs, tmp_path, capsys, monkeypatch):
    before = _snapshot(inputs)
    assert main(["purify", str(inputs), "--out", str(inputs), *FAST]) == 2
    assert "folder of the input images" in capsys.readouterr().err
    monkeypatch.chdir(inputs)
    assert main(["purify", "a.png", "--out", ".", *FAST]) == 2
    err = capsys.readouterr().err
    assert "folder of the input images" in err and "Traceback" not in err
    # a folder that already holds other files (here: the input folder's parent) is refused too
    assert main(["purify", "a.png", "--out", str(tmp_path), *FAST]) == 2
    assert "is not empty" in capsys.readouterr().err
    # a symlinked output folder that points at the inputs
    (tmp_path / "link").symlink_to(inputs)
    assert main(["purify", str(inputs / "a.png"), "--out", str(tmp_path / "link"), *FAST]) == 2
    assert _snapshot(inputs) == before


def test_out_must_be_a_new_or_empty_writable_folder(inputs, tmp_path, capsys):
    file = tmp_path / "file.txt"
    file.write_text("keep me")
    for out, match in [(file, "is not a folder"), (Path("/dev/null"), "is not a folder"),
                       (Path("/sys/freqpure-test-out"), "Operation not permitted")]:
        assert main(["purify", str(inputs / "a.png"), "--out", str(out), *FAST]) == 2, out
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err and err.count("\n") == 1, err
    assert file.read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["purify", str(inputs / "a.png"), "--out", str(empty), *FAST]) == 0
    # a second run into the same (now filled) folder is refused: it never replaces earlier results
    first = _snapshot(empty)
    assert main(["purify", str(inputs / "a.png"), "--out", str(empty), "--seed", "9", *FAST]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert _snapshot(empty) == first


def test_failed_command_leaves_nothing_behind(inputs, tmp_path, capsys):
    odd = inputs / "odd.png"
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(odd)
    out = tmp_path / "new" / "deeper"
    assert main(["purify", str(inputs), "--out", str(out), *FAST]) == 2  # mixed sizes
    err = capsys.readouterr().err
    assert "odd.png is 40x48 but model" in err and "--resize" in err
    assert not (tmp_path / "new").exists()
    assert main(["purify", str(inputs / "a.png"), "--out", str(out), "--diffusion", "no-such", *FAST]) == 2
    assert not (tmp_path / "new").exists()


def _png_header_only(path: Path, width: int, height: int) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_unusual_images_are_refused_or_converted_on_request(tmp_path, capsys, real_images):
    rgb = (real_images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    grey16 = (rgb.mean(2) * 257).astype(np.uint16)  # 16-bit greyscale, mean well below white
    Image.fromarray(grey16).save(folder / "g16.png")
    assert Image.open(folder / "g16.png").mode.startswith("I")
    Image.fromarray(rgb[..., 0]).save(folder / "grey.png")
    rgba = np.dstack([rgb, np.full((32, 32), 255, np.uint8)])
    rgba[:8, :8, 3] = 0
    Image.fromarray(rgba).save(folder / "alpha.png")
    for name in ("g16.png", "grey.png", "alpha.png"):
        assert main(["purify", str(folder / name), "--out", str(tmp_path / "o"), *FAST]) == 2
        err = capsys.readouterr().err
        assert name in err and "--convert" in err and "Traceback" not in err
        assert not (tmp_path / "o").exists()
    out = tmp_path / "conv"
    assert main(["purify", str(folder), "--out", str(out), "--convert", *FAST]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {Path(r["input"]).name: r for r in manifest["files"]}
    assert "16-bit" in by_name["g16.png"]["conversions"][0]
    assert by_name["grey.png"]["conversions"] == ["greyscale (L) -> RGB"]
    assert by_name["alpha.png"]["conversions"] == ["transparent pixels composited onto white"]
    assert manifest["n_converted"] == 3 and all(r["seconds"] > 0 for r in manifest["files"])
    # the 16-bit image keeps its brightness (it used to be read as solid white)
    purified = read(out / "g16.png").astype(float)
    assert abs(purified.mean() - grey16.mean() / 257) < 25 and purified.mean() < 230

    # animations and non-PNG content named .png are always refused
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "gif.png", format="GIF")
    _png_header_only(tmp_path / "huge.png", 20000, 20000)
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    cases = [("anim.png", "animated (2 frames)"), ("gif.png", "holds a GIF image"),
             ("huge.png", "too large"), ("zero.png", "character device")]
    for name, match in cases:
        assert main(["purify", str(tmp_path / name), "--out", str(tmp_path / "o"), "--convert", *FAST]) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err, (name, err)


def test_resize_is_recorded_per_file(tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.full((48, 40, 3), 120, dtype=np.uint8)).save(big)
    assert main(["purify", str(big), "--out", str(tmp_path / "r"), "--resize", *FAST]) == 0
    (record,) = json.loads((tmp_path / "r" / "manifest.json").read_text())["files"]
    assert record["conversions"] == ["resized from 48x40 to 32x32"]
    assert record["input_size"] == [48, 40] and record["output_size"] == [32, 32]


def test_shared_vocabulary_config_sections_and_conflicts(inputs, tmp_path, capsys):
    a = str(inputs / "a.png")
    # --config takes the purifier: section of an evaluate config (unquoted 100:20 is a plan, not 6020)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("name: x\npurifier:\n  method: diffpure\n  rounds: 10:2\nattacks:\n  - name: pgd\n")
    out = tmp_path / "o1"
    assert main(["purify", a, "--out", str(out), "--config", str(cfg), "--device", "cpu", "--threads", "1",
                 "--no-progress", "--diffusion", "cifar10-ddpm-small"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["method"] == "diffpure" and manifest["settings"]["rounds"] == "10:2"
    assert manifest["config_file"]["kind"] == "purifier: section of an evaluate config"
    train = tmp_path / "train.yaml"
    train.write_text("data:\n  n: 3\nattacks: []\n")
    dup = tmp_path / "dup.yaml"
    dup.write_text("delta: 0.1\ndelta: 0.2\n")
    cases = [
        (["--config", str(train)], "has no purifier settings"),
        (["--config", str(dup)], "duplicate key 'delta'"),
        (["--rounds", "20:2"], "--t-star/--steps and --rounds both set the purification plan"),
        (["--set", "rounds=20:2"], "--t-star/--steps and --rounds both set the purification plan"),
        (["--set", "delta=0.1", "--delta", "0.2"], "delta given both by --set and by its own flag"),
    ]
    for extra, match in cases:
        assert main(["purify", a, "--out", str(tmp_path / "o2"), *FAST, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "o2").exists()

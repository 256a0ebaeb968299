"""Data loaders on the real shared CIFAR-10 archives and on small synthetic folders/archives."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freqpure import data
from freqpure.data import CIFAR10_CLASSES


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _tiny_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# real archives
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_test_tar_full_load(cifar_test_tar: Path) -> None:
    t0 = time.perf_counter()
    x, y = data.load_cifar10_tar(cifar_test_tar)
    elapsed = time.perf_counter() - t0
    assert x.shape == (10_000, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (10_000,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), np.full(10, 1000))
    # members are sorted by class folder: labels follow the canonical class order
    assert np.array_equal(y, np.repeat(np.arange(10), 1000))
    assert elapsed < 30, f"loading the test tar took {elapsed:.1f}s"
    # pixel statistics are those of natural images, not garbage
    assert 100 < x.mean() < 140


def test_load_cifar10_finds_shared_dir(cifar_test_tar: Path) -> None:
    x, y = data.load_cifar10("test", cifar_test_tar.parent)
    assert x.shape == (10_000, 32, 32, 3)
    xf = data.to_float(x[:8])
    assert xf.shape == (8, 3, 32, 32) and xf.dtype == torch.float32
    assert 0.0 <= xf.min() and xf.max() <= 1.0
    assert torch.equal(xf[0, :, 3, 5], torch.tensor(x[0, 3, 5]).float() / 255)
    xt, yt = data.load_cifar10_tensors("test", cifar_test_tar.parent)
    assert xt.shape == (10_000, 3, 32, 32) and yt.dtype == torch.int64 and torch.equal(xt[:8], xf)


@pytest.mark.slow
def test_train_tar_spot_check(cifar_train_tar: Path) -> None:
    with tarfile.open(cifar_train_tar) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        assert len(members) == 50_000
        classes = [m.name.split("/")[0] for m in members]
        assert [classes.count(c) for c in CIFAR10_CLASSES] == [5000] * 10
        picks = [members[i] for i in (0, 12_345, 49_999)]
        for m in picks:
            arr = data.decode_image(tar.extractfile(m).read(), m.name, 32)
            assert arr.shape == (32, 32, 3)
    assert picks[0].name == "airplane/0000.jpg" and picks[-1].name == "truck/4999.jpg"


def test_eval_subset_deterministic_and_balanced(cifar_test_tar: Path) -> None:
    a = data.eval_subset(512, 0, data_dir=cifar_test_tar.parent)
    b = data.eval_subset(512, 0, data_dir=cifar_test_tar.parent)
    assert np.array_equal(a.indices, b.indices) and torch.equal(a.x, b.x)
    assert a.x.shape == (512, 3, 32, 32) and a.y.dtype == torch.int64
    counts = np.bincount(a.y.numpy(), minlength=10)
    assert counts.sum() == 512 and set(counts.tolist()) <= {51, 52}
    assert len(np.unique(a.indices)) == 512
    # golden values: the documented standard subset never changes
    assert a.indices[:5].tolist() == [8, 25, 36, 69, 81]
    other = data.eval_subset_indices(a.y.numpy(), 100, seed=1)
    assert not np.array_equal(data.eval_subset_indices(a.y.numpy(), 100, seed=0), other)


def test_eval_subset_indices_errors() -> None:
    y = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="n must be"):
        data.eval_subset_indices(y, 0)
    with pytest.raises(ValueError, match="balanced"):
        data.eval_subset_indices(np.array([0, 0, 0, 1]), 4)


# ----------------------------------------------------------------------------------------------
# error handling
# ----------------------------------------------------------------------------------------------
def test_truncated_tar_names_member(cifar_test_tar: Path, tmp_path: Path) -> None:
    cut = tmp_path / "test.tar"
    cut.write_bytes(cifar_test_tar.read_bytes()[:200_000])
    with pytest.raises(ValueError, match=r"truncated|corrupt") as info:
        data.load_cifar10_tar(cut, cache=False)
    assert "airplane/" in str(info.value)


def test_corrupt_image_names_member(tmp_path: Path) -> None:
    members = {f"{c}/0000.png": _jpeg(_tiny_images(1, seed=i)[0]) for i, c in enumerate(CIFAR10_CLASSES)}
    members["cat/0001.png"] = b"\x89PNG not really an image"
    path = _make_tar(tmp_path / "bad.tar", dict(sorted(members.items())))
    with pytest.raises(ValueError, match=r"cat/0001\.png: cannot decode"):
        data.load_cifar10_tar(path, cache=False)


def test_wrong_size_and_missing_class(tmp_path: Path) -> None:
    members = {f"{c}/0000.png": _jpeg(_tiny_images(1, seed=i)[0]) for i, c in enumerate(CIFAR10_CLASSES)}
    members["dog/0001.png"] = _jpeg(_tiny_images(1, size=40)[0])
    with pytest.raises(ValueError, match=r"dog/0001\.png: image is 40x40, expected 32x32"):
        data.load_cifar10_tar(_make_tar(tmp_path / "size.tar", members), cache=False)
    two = {f"{c}/0000.png": _jpeg(_tiny_images(1)[0]) for c in ("airplane", "bird")}
    with pytest.raises(ValueError, match=r"no images for classes \['automobile'"):
        data.load_cifar10_tar(_make_tar(tmp_path / "two.tar", two), cache=False)
    unknown = {"zebra/0000.png": _jpeg(_tiny_images(1)[0])}
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        data.load_cifar10_tar(_make_tar(tmp_path / "zebra.tar", unknown), cache=False)


def test_missing_dir_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_cifar10("test", tmp_path / "nope")
    monkeypatch.setenv("FREQPURE_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        data.load_cifar10("test", tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value) and "FREQPURE_DATA" in str(info.value)
    with pytest.raises(ValueError, match="split"):
        data.load_cifar10("val")


def test_search_paths_include_env_and_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREQPURE_DATA", str(tmp_path))
    paths = data.cifar10_search_paths()
    assert paths[0] == tmp_path and paths[1] == tmp_path / "cifar10"
    assert any(p.parts[-3:] == ("shared", "data", "cifar10") for p in paths)


# ----------------------------------------------------------------------------------------------
# other formats
# ----------------------------------------------------------------------------------------------
def _write_batches(folder: Path, n_train: int = 20, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    test_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = [int(v) for v in rng.integers(0, 10, n_test)]
    for i in range(1, 6):
        x = rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": x, b"labels": [i % 10] * len(x)}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": test_x, b"labels": test_y}, f)
    return test_x, np.asarray(test_y)


def test_python_batches(tmp_path: Path) -> None:
    raw, labels = _write_batches(tmp_path / "cifar-10-batches-py")
    x, y = data.load_cifar10("test", tmp_path)
    assert x.shape == (10, 32, 32, 3) and np.array_equal(y, labels)
    # the flat record is R plane, then G, then B (row-major 32x32 each)
    assert x[0, 0, 1, 0] == raw[0, 1] and x[0, 0, 0, 1] == raw[0, 1024]
    xt, yt = data.load_cifar10("train", tmp_path)
    assert xt.shape == (20, 32, 32, 3) and yt.dtype == np.int64


def test_image_folder_cifar(tmp_path: Path) -> None:
    imgs = _tiny_images(20)
    for i, c in enumerate(CIFAR10_CLASSES):
        (tmp_path / "test" / c).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(imgs[2 * i + j]).save(tmp_path / "test" / c / f"{j}.png")
    x, y = data.load_cifar10("test", tmp_path)
    assert np.array_equal(x, imgs) and np.array_equal(y, np.repeat(np.arange(10), 2))
    (tmp_path / "test" / "cat" / "0.png").unlink()
    (tmp_path / "test" / "cat" / "1.png").unlink()
    with pytest.raises(ValueError, match="holds no images"):
        data.load_cifar10("test", tmp_path)


def test_download_from_local_url(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write_batches(src / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.download_cifar10(dest, url=archive.as_uri(), md5="0" * 32)
    assert not any(dest.glob("*.part")) and not (dest / "cifar-10-python.tar.gz").exists()
    data.download_cifar10(dest, url=archive.as_uri(), md5=md5)
    x, _ = data.load_cifar10("test", dest)
    assert x.shape == (10, 32, 32, 3)


def test_imagenet_val_synthetic(tmp_path: Path) -> None:
    synsets = ["n01440764", "n01443537", "n01484850"]
    rng = np.random.default_rng(0)
    sizes = [(300, 400), (500, 260), (256, 256)]
    for k, s in enumerate(synsets):
        (tmp_path / "val" / s).mkdir(parents=True)
        for j, (h, w) in enumerate(sizes):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "val" / s / f"ILSVRC2012_val_{k}{j}.JPEG", quality=90)
    ds = data.imagenet_val(tmp_path)
    assert len(ds) == 9 and ds.classes == synsets
    x, y = data.stack_dataset(ds, range(len(ds)))
    assert x.shape == (9, 3, 256, 256) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    small = data.ImageFolderDataset(tmp_path / "val", resize=256, crop=224)
    assert small[0][0].shape == (3, 224, 224)
    (tmp_path / "val" / synsets[1] / "ILSVRC2012_val_10.JPEG").write_bytes(b"broken")
    with pytest.raises(ValueError, match="ILSVRC2012_val_10.JPEG: cannot decode"):
        data.imagenet_val(tmp_path)[3]
    with pytest.raises(ValueError, match="missing class folders"):
        data.ImageFolderDataset(tmp_path / "val", classes=[*synsets, "n99999999"])
    with pytest.raises(FileNotFoundError):
        data.imagenet_val(tmp_path / "nothing")


def test_array_dataset(cifar_test_tar: Path) -> None:
    ds = data.ArrayDataset.cifar10("test", cifar_test_tar.parent)
    x, y = ds[1234]
    assert x.shape == (3, 32, 32) and y == 1
    with pytest.raises(ValueError):
        data.ArrayDataset(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(3, np.int64))


# ----------------------------------------------------------------------------------------------
# hostile inputs (issue 11 item 3, issue 16 item 6)
# ----------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("where", ["top", "inside"])
def test_malicious_batch_file_is_refused_and_not_executed(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "evil" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    x = np.zeros((10, 3072), dtype=np.uint8)
    obj = _Payload(marker) if where == "top" else {b"data": x, b"labels": [0] * 10, b"x": _Payload(marker)}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(obj, f)
    with pytest.raises(ValueError, match="refused to load CIFAR-10 batch file.*pathlib"):
        data.load_cifar10("test", tmp_path / "evil")
    assert not marker.exists()
    # also builtins / os calls and persistent ids
    with open(folder / "test_batch", "wb") as f:
        f.write(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(ValueError, match="os.system"):
        data.load_cifar10_batches(folder)
    assert not marker.exists()


def test_batch_file_with_wrong_types_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), dtype=np.float64), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="expected uint8"):
        data.load_cifar10_batches(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="expected dict"):
        data.load_cifar10_batches(folder)


def test_working_directory_is_not_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FREQPURE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert all(tmp_path not in p.parents and p != tmp_path for p in data.cifar10_search_paths())
    _write_batches(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    assert data.find_cifar10_dir() != tmp_path / "data" / "cifar10"


def test_freqpure_data_pointing_nowhere_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREQPURE_DATA", str(tmp_path / "nonexistent"))
    with pytest.raises(FileNotFoundError, match="FREQPURE_DATA=.*nonexistent.*is not a folder"):
        data.load_cifar10("test")
    monkeypatch.setenv("FREQPURE_DATA", "")
    with pytest.raises(FileNotFoundError, match="FREQPURE_DATA"):
        data.find_cifar10_dir()
    # an explicit data dir wins over the variable
    _write_batches(tmp_path / "ok" / "cifar-10-batches-py")
    assert data.load_cifar10("test", tmp_path / "ok")[0].shape == (10, 32, 32, 3)

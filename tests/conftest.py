"""Shared test fixtures: locations of the real data and fixtures in ``../shared``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FREQPURE_SHARED", REPO.parent / "shared"))

# precision "auto" means fp32 in the tests (exact reference values on every machine); the bf16 tests
# ask for bf16 explicitly. Set before any test runs; subprocesses (CLI tests) inherit it.
os.environ["FREQPURE_PRECISION"] = "fp32"

# Two cores on CI: keep each test process from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))


def _data_dir() -> Path | None:
    """The folder holding ``cifar10/`` (``$FREQPURE_DATA``, else ``../shared/data``), or None when absent."""
    env = os.environ.get("FREQPURE_DATA")
    for folder in ([Path(env).expanduser()] if env else []) + [SHARED / "data"]:
        if (folder / "cifar10" / "test.tar").is_file():
            return folder
        if (folder / "test.tar").is_file():  # FREQPURE_DATA pointing at the cifar10 folder itself
            return folder.parent
    return None


DATA = _data_dir()
if DATA is not None:
    os.environ.setdefault("FREQPURE_DATA", str(DATA))  # the library finds the same copy as the tests
_WHERE = f"FREQPURE_DATA={os.environ['FREQPURE_DATA']}" if os.environ.get("FREQPURE_DATA") else "FREQPURE_DATA unset"
NO_DATA = (
    f"CIFAR-10 test data not found ({_WHERE}, no {SHARED / 'data' / 'cifar10' / 'test.tar'}): set FREQPURE_DATA "
    "to a folder holding cifar10/test.tar and cifar10/train.tar (and FREQPURE_SHARED to the shared folder with "
    "fixtures/)"
)


def require_data() -> Path:
    """The data folder, or skip the calling test with a message naming FREQPURE_DATA (fail under ``CI``)."""
    if DATA is None:
        if os.environ.get("CI"):
            pytest.fail(NO_DATA + " -- CI must run every test")
        pytest.skip(NO_DATA)
    return DATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.data`` tests skip without the data; ``@pytest.mark.gpu`` tests without CUDA."""
    no_cuda = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu_check.sh runs these)")
    for item in items:
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if item.get_closest_marker("data") and DATA is None and not os.environ.get("CI"):
            item.add_marker(pytest.mark.skip(reason=NO_DATA))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    require_data()
    if not SHARED.is_dir():
        pytest.skip(f"shared test folder not found at {SHARED}: set FREQPURE_SHARED (and FREQPURE_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def cifar_test_tar() -> Path:
    return require_data() / "cifar10" / "test.tar"


@pytest.fixture(scope="session")
def cifar_train_tar() -> Path:
    return require_data() / "cifar10" / "train.tar"


@pytest.fixture(scope="session")
def mini_cifar_dir(tmp_path_factory) -> Path:
    """A data folder of real CIFAR-10 images, small: ``cifar10/train.tar`` (every 250th train member, 200
    images) and ``cifar10/test.tar`` (every 50th test member, 200 images), class folders kept. For tests of
    plumbing (config, CLI, resume) that would otherwise spend half a minute decoding 60,000 JPEGs."""
    import tarfile

    out = tmp_path_factory.mktemp("mini-data") / "cifar10"
    out.mkdir()
    for split, every in (("train", 250), ("test", 50)):
        with tarfile.open(require_data() / "cifar10" / f"{split}.tar") as src, \
                tarfile.open(out / f"{split}.tar", "w") as dst:
            for m in [m for m in src.getmembers() if m.isfile()][::every]:
                dst.addfile(m, src.extractfile(m))
    return out


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures"


def read_tar_images(tar_path: Path, every: int = 1000, limit: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``limit`` JPEGs (every ``every``-th member) from a class-folder tar → ([N,3,H,W] in [0,1], labels)."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images, labels = [], []
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()][::every][:limit]
        for m in members:
            data = tar.extractfile(m).read()
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(classes.index(m.name.split("/")[0]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor(labels)


@pytest.fixture(scope="session")
def real_images(cifar_test_tar: Path) -> torch.Tensor:
    """16 real CIFAR-10 test images ``[16, 3, 32, 32]`` in [0, 1], spread over the classes."""
    return read_tar_images(cifar_test_tar, every=625, limit=16)[0]


TINY_DEMO_ARGS = ["--n", "3", "--batch-size", "2", "--attack-steps", "2", "--eot", "2", "--ensemble", "1",
                  "--rounds", "20:2", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory, shared_dir: Path) -> tuple[Path, list[str], str]:
    """``freqpure demo`` at a tiny size on the bundled models and real CIFAR-10 images (a real evaluate output
    for three defences): ``(out dir, the CLI arguments, what it printed)``."""
    import contextlib
    import io

    from freqpure.cli.main import main
    from helpers import model_name, one_thread

    out = tmp_path_factory.mktemp("demo") / "demo"
    args = ["demo", "--out", str(out), *TINY_DEMO_ARGS, "--classifier", model_name("cifar10-resnet-small"),
            "--diffusion", model_name("cifar10-ddpm-small")]
    printed = io.StringIO()
    with one_thread(), contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return out, args, printed.getvalue()


@pytest.fixture(scope="module")
def classifier():
    """The bundled plain classifier (eval mode, frozen); a test module may define its own ``classifier``."""
    import freqpure
    from helpers import model_name

    return freqpure.load_classifier(model_name("cifar10-resnet-small")).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def eps_model():
    """The bundled ε-model (eval mode, frozen); a test module may define its own ``eps_model``."""
    import freqpure
    from helpers import model_name

    return freqpure.load_diffusion(model_name("cifar10-ddpm-small")).eval().requires_grad_(False)

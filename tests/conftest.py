"""Shared test fixtures: locations of the real data and fixtures in ``../shared``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FREQPURE_SHARED", REPO.parent / "shared"))

# Two cores on CI: keep each test process from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED} (set FREQPURE_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def cifar_test_tar(shared_dir: Path) -> Path:
    return shared_dir / "data" / "cifar10" / "test.tar"


@pytest.fixture(scope="session")
def cifar_train_tar(shared_dir: Path) -> Path:
    return shared_dir / "data" / "cifar10" / "train.tar"


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


TINY_DEMO_ARGS = ["--n", "3", "--batch-size", "2", "--steps", "2", "--eot", "2", "--ensemble", "1",
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

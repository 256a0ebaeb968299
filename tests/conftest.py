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

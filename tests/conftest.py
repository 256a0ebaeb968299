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

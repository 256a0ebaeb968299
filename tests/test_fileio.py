"""Atomic writes: all or nothing, and the usual permissions whoever wrote the temporary file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from freqpure._fileio import atomic_path
from freqpure.models.checkpoint import read_safetensors, write_safetensors
from freqpure.training.export import save_safetensors


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _usual() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]


def test_text_and_weights_files_get_the_usual_permissions(tmp_path) -> None:
    """safetensors' writer replaces its file with a 0600 one; exported weights must still be readable by others."""
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    save_safetensors({"w": torch.zeros(3)}, tmp_path / "export.safetensors", {"freqpure_kind": "diffusion"})
    write_safetensors(tmp_path / "converted.safetensors", {"w": torch.ones(3)}, {"freqpure_kind": "classifier"})
    for name in ("a.txt", "export.safetensors", "converted.safetensors"):
        assert _mode(tmp_path / name) == _usual(), name
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "converted.safetensors", "export.safetensors"]
    tensors, meta = read_safetensors(tmp_path / "converted.safetensors")
    assert torch.equal(tensors["w"], torch.ones(3)) and meta["freqpure_kind"] == "classifier"

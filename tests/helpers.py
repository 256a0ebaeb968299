"""Helpers shared by the test modules (importable as ``helpers``: pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def model_name(name: str) -> str:
    """A bundled model's registry name (``$FREQPURE_TEST_WEIGHTS`` may point at a folder of other weights)."""
    folder = os.environ.get("FREQPURE_TEST_WEIGHTS")
    return os.path.join(folder, f"{name}.safetensors") if folder else name


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight the other test processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or '' where it cannot be read."""
    from pathlib import Path

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")


def same_machine(recorded: dict[str, str]) -> bool:
    """Whether this is the kind of machine ``recorded`` ({"cpu_model", "cpu_capability", "torch"}) names: the
    only place where bit-for-bit equality of float results is a fair claim."""
    return (recorded.get("cpu_model") == cpu_model() != ""
            and recorded.get("cpu_capability") == torch.backends.cpu.get_cpu_capability()
            and recorded.get("torch") == torch.__version__)

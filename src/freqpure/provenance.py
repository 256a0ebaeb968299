"""What every results file records about the run: versions, platform, device, time."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from typing import Any

import torch

__all__ = ["environment"]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str | torch.device | None = None) -> dict[str, Any]:
    """Versions of the packages that change numbers, the platform, and the device in use."""
    info: dict[str, Any] = {
        "freqpure": _version("freqpure"),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "torchsde": _version("torchsde"),
        "pyautoattack": _version("pyautoattack"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device is not None:
        dev = torch.device(device)
        info["device"] = str(dev)
        if dev.type == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(dev)
            info["cuda"] = torch.version.cuda
    return info

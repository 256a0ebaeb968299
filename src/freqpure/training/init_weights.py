"""Starting weights of a run: a bundled model (by name) or a freqpure ``.safetensors`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from freqpure.errors import UsageError

__all__ = ["load_initial_weights"]


def load_initial_weights(model: nn.Module, init_from: str, kind: str, arch: str, model_kwargs: dict[str, Any]) -> None:
    """Load the weights named by ``init_from`` into ``model``: a ``kind`` model of ``arch`` that fits exactly."""
    from freqpure.models.bundled import BUNDLED, build_from_file, weights_path

    path = weights_path(init_from) if init_from in BUNDLED else Path(init_from)
    net, meta = build_from_file(path, kind=kind, arch=arch)
    try:
        model.load_state_dict(net.state_dict(), strict=True)
    except RuntimeError as err:
        raise UsageError(
            f"init_from {path}: its weights ({meta['freqpure_config']}) do not fit model {model_kwargs}: {err}"
        ) from None

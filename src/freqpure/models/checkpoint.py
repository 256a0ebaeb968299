"""Safe checkpoint I/O: safetensors or ``torch.load(weights_only=True)``, never arbitrary pickles.

* :func:`read_checkpoint` reads a ``.safetensors`` file (no pickle at all) or a PyTorch file with the
  weights-only unpickler. A pickle that needs code to load (a class, a function, ``os.system`` …) is
  refused with :class:`UnsafeCheckpointError`, which explains how to convert the file once on a
  trusted machine (``freqpure convert CKPT --to out.safetensors --trust-pickle``).
* :func:`write_safetensors` / :func:`read_safetensors` keep freqpure's metadata (``freqpure_kind``,
  ``freqpure_arch``, ``freqpure_config`` …) next to the tensors.
* :func:`align_prefix`, :func:`mismatch_report` and :func:`load_weights` map a state_dict onto a model
  strictly and turn a wrong architecture into a short report instead of a stack trace.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from freqpure._fileio import atomic_path
from freqpure.errors import CheckpointError, NotFoundError

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointError",
    "CorruptCheckpointError",
    "SafetensorsFile",
    "UnsafeCheckpointError",
    "align_prefix",
    "check_finite",
    "count_elements",
    "expected_shapes",
    "find_state_dict",
    "is_safetensors",
    "load_weights",
    "mismatch_report",
    "normalize_state_dict",
    "read_checkpoint",
    "read_safetensors",
    "sha256_of",
    "write_safetensors",
]

_SHOW = 5  # keys listed per category in a mismatch report


class UnsafeCheckpointError(CheckpointError):
    """The file is a pickle that needs code to load; refused."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, corrupt or not a checkpoint at all."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the architecture."""


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class SafetensorsFile:
    """Contents of a ``.safetensors`` file: CPU tensors and string metadata."""

    state_dict: dict[str, Tensor]
    metadata: dict[str, str]


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """True when the file starts like a safetensors file (u64 header length, then a JSON object)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + n <= size


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors (on CPU) and the string metadata of a safetensors file. No pickle involved."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own error types for any malformed file
        raise CorruptCheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {_first_line(err)}"
        ) from err
    return tensors, metadata


def read_checkpoint(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Any:
    """Load a checkpoint's contents on CPU without running code from it.

    safetensors files return a :class:`SafetensorsFile`. PyTorch files go through
    ``torch.load(weights_only=True)``; ``trust_pickle=True`` allows full unpickling (only for files
    from a trusted source, e.g. when converting once with ``freqpure convert --trust-pickle``).
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise CheckpointError(f"{path} is not a regular file (a folder or a device); give a checkpoint file")
        raise NotFoundError(f"checkpoint not found: {path}")
    shown = f"{path} (a link to {path.resolve()})" if path.is_symlink() else str(path)
    if is_safetensors(path) or path.suffix == ".safetensors":
        return SafetensorsFile(*read_safetensors(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise _explain_unpickling_error(path, err, trust_pickle) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, MemoryError, IndexError, KeyError,
            TypeError, AttributeError, struct.error) as err:
        # The weights-only unpickler meets arbitrary bytes (a text file, a truncated download) with
        # whatever error its parser hits first; none of them is more than "this is not a checkpoint".
        raise CorruptCheckpointError(
            f"{shown}: cannot read this checkpoint (not a PyTorch/safetensors file, or a truncated or corrupt "
            f"download?): {_first_line(err)}. Re-download the file and compare its size/checksum with the source."
        ) from None


def _explain_unpickling_error(path: Path, err: Exception, trust_pickle: bool) -> CheckpointError:
    text = str(err)
    if trust_pickle:
        return CorruptCheckpointError(f"{path}: not a readable pickle (corrupt?): {_first_line(err)}")
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[: ]+([\w.]+)", text, re.IGNORECASE)
    convert = (
        f"If you trust its source, convert it once on a trusted machine with\n"
        f"    freqpure convert {path} --to {path.with_suffix('.safetensors')} --trust-pickle\n"
        "and load the resulting .safetensors file (no pickle involved)."
    )
    if found:
        return UnsafeCheckpointError(
            f"{path}: refused to load. This pickle needs code to load ({found.group(1)}), and unpickling "
            "it could run arbitrary code, so freqpure only loads tensors (torch.load(weights_only=True)) "
            f"or safetensors.\n{convert}"
        )
    return UnsafeCheckpointError(
        f"{path}: cannot be read safely: it is corrupt, not a PyTorch checkpoint, or a pickle that uses "
        f"features the weights-only loader refuses ({_first_line(_wo_detail(text))}).\n{convert}"
    )


def _wo_detail(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and ("Unsupported" in line or "error" in line.lower()) and "weights_only" not in line:
            return line
    return text


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    if not text:
        return type(err).__name__
    line = text.splitlines()[0]
    if len(line) > 200 and ". " in line[:200]:
        line = line[: line.index(". ") + 1]
    return line[:300]


def sha256_of(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- writing


def write_safetensors(
    path: str | os.PathLike[str], state_dict: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> Path:
    """Atomically write tensors (moved to CPU, made contiguous, never aliased) and string metadata."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    path = Path(path)
    with atomic_path(path) as tmp:  # makes the parent folder
        save_file(tensors, str(tmp), metadata={str(k): str(v) for k, v in metadata.items()})
    return path


# ------------------------------------------------------------------------------- state_dict mapping


def find_state_dict(obj: Any, wrappers: tuple[str, ...] = ("state_dict", "model_state_dict", "model")) -> dict:
    """The tensor mapping inside a checkpoint: the object itself or its first wrapper key found."""
    if isinstance(obj, SafetensorsFile):
        return dict(obj.state_dict)
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        for key in wrappers:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
    kind = type(obj).__name__
    keys = list(obj.keys())[:8] if isinstance(obj, Mapping) else []
    raise CheckpointError(
        f"no state_dict found in this checkpoint ({kind}" + (f" with keys {keys}" if keys else "") + "); "
        f"expected a mapping of tensors, possibly under one of {list(wrappers)}"
    )


_PREFIXES = ("", "module.", "module.0.", "model.", "module.model.", "0.", "net.")


def align_prefix(state_dict: Mapping[str, Tensor], expected: Mapping[str, Any]) -> dict[str, Tensor]:
    """Strip the wrapper prefix (``module.``, ``module.0.``, ``model.`` …) that best matches ``expected``."""
    best, best_hits = dict(state_dict), -1
    for prefix in _PREFIXES:
        if prefix and not any(k.startswith(prefix) for k in state_dict):
            continue
        stripped = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
        hits = sum(k in expected for k in stripped)
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``state_dict`` key → shape of a (possibly meta-device) model."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def mismatch_report(
    expected: Mapping[str, tuple[int, ...]],
    state_dict: Mapping[str, Tensor],
    *,
    optional: frozenset[str] | set[str] = frozenset(),
) -> str | None:
    """Human-readable differences between expected key shapes and a state_dict; ``None`` if they match."""
    missing = [k for k in expected if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {list(state_dict[k].shape)} vs model {list(s)}"
        for k, s in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(s)
    ]
    if not (missing or unexpected or shapes):
        return None
    lines = [f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} shape-mismatched keys"]
    for title, items in (("missing (in model, not in file)", missing),
                         ("unexpected (in file, not in model)", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" … (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            lines.append(f"  {title}: " + ", ".join(items[:_SHOW]) + more)
    return "\n".join(lines)


def _bn_counters(expected: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> set[str]:
    """BatchNorm ``num_batches_tracked`` keys that older checkpoints may lack."""
    return {
        k for k in expected
        if k.endswith("num_batches_tracked") and k not in state_dict
        and k[: -len("num_batches_tracked")] + "running_mean" in state_dict
    }


def normalize_state_dict(
    reference: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], *, what: str
) -> dict[str, Tensor]:
    """Map ``state_dict`` onto the keys of ``reference`` (a model's ``state_dict()``, meta is fine).

    Strips a wrapper prefix, fills missing BatchNorm ``num_batches_tracked`` counters and casts each
    tensor to the reference dtype. Raises :class:`ArchitectureMismatchError` naming the first
    missing / unexpected / shape-mismatched keys.
    """
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    sd = align_prefix(state_dict, expected)
    counters = _bn_counters(expected, sd)
    report = mismatch_report(expected, sd, optional=counters)
    if report:
        raise ArchitectureMismatchError(
            f"{what}: the checkpoint does not match the architecture.\n{report}\n"
            "Check that the file is the one this model expects (see docs/checkpoints.md), or pass the "
            "right --arch/--config when converting."
        )
    ints = [k for k, ref in reference.items() if k in sd and ref.is_floating_point() and not sd[k].is_floating_point()]
    if ints:  # a cast would silently turn quantised or damaged weights into nonsense floats
        k = ints[0]
        raise CorruptCheckpointError(f"{what}: {len(ints)} weight tensor(s) are stored as integers where the model "
                                     f"holds floats ({k}: {sd[k].dtype}, expected {reference[k].dtype}); a quantised "
                                     "or damaged checkpoint is not loaded: give the float weights")
    out = {}
    for k, ref in reference.items():
        v = sd[k] if k in sd else torch.zeros((), dtype=torch.long)
        out[k] = v.to(ref.dtype) if v.dtype != ref.dtype else v
    return out


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], *, what: str) -> nn.Module:
    """Strictly load ``state_dict`` into ``model`` (see :func:`normalize_state_dict`).

    A model on the ``meta`` device is materialised by assignment (no copy, no init cost); it must
    then have no non-persistent buffers.
    """
    current = model.state_dict()
    sd = normalize_state_dict(current, state_dict, what=what)
    check_finite(sd, what=what)
    on_meta = any(t.is_meta for t in current.values())
    model.load_state_dict(sd, strict=True, assign=on_meta)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"{what}: tensors left uninitialised after loading: {leftover[:_SHOW]}")
    return model


def check_finite(state_dict: Mapping[str, Tensor], *, what: str) -> None:
    """Refuse weights holding NaN or Inf (such a network predicts one class for everything, silently)."""
    bad = [k for k, v in state_dict.items()
           if isinstance(v, Tensor) and v.is_floating_point() and not v.is_meta and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" … (+{len(bad) - _SHOW} more)" if len(bad) > _SHOW else ""
        raise CorruptCheckpointError(f"{what}: {len(bad)} weight tensor(s) hold NaN or Inf values "
                                     f"({', '.join(bad[:_SHOW])}{more}); the checkpoint is corrupt or diverged")


def count_elements(model: nn.Module) -> int:
    """Number of values in a model's state_dict (parameters and persistent buffers)."""
    return sum(t.numel() for t in model.state_dict().values())

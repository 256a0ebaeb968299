"""``precision: auto`` that measures: fp32 against bf16 autocast, timed on first use, cached per machine and model.

The first ``auto`` call of a model on a device times a few calls of it in each precision (interleaved,
best of :data:`REPEATS`, after one warm-up each, without gradients) and keeps bf16 only when it is at
least :data:`MARGIN` faster (:func:`decide_precision`). The decision is kept for the process and written
to ``precision.json`` in the user's cache folder (:func:`cache_dir`: ``$FREQPURE_CACHE_DIR``, else
``$XDG_CACHE_HOME/freqpure``, else ``~/.cache/freqpure``; never the repository), keyed by the machine
(CPU model and bf16 flags, thread count, torch version; or the GPU's name) and the model (class,
parameter shapes, input shapes). :func:`decisions` lists what this process chose and why, for results
files. ``$FREQPURE_PRECISION`` (``fp32``/``bf16``) still overrides ``auto`` without measuring.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from freqpure._fileio import write_json_atomic

__all__ = ["MARGIN", "REPEATS", "Decision", "cache_dir", "decide_precision", "decisions", "machine_key",
           "measured_precision", "model_key", "probe_precision", "time_precisions"]

MARGIN = 0.05  # bf16 must be at least this much faster than fp32 to be chosen
REPEATS = 3  # timed calls per precision (after one warm-up call each)
CLEARLY_SLOWER = 3.0  # a bf16 warm-up call this many times slower than fp32's decides without more calls
_CACHE_FILE = "precision.json"


@dataclass(frozen=True)
class Decision:
    """What ``auto`` chose for one model on one machine, and why."""

    choice: str  # "fp32" or "bf16"
    reason: str
    fp32_seconds: float | None
    bf16_seconds: float | None
    source: str  # "measured", "cache" or "unsupported"
    machine: str
    model: str


_MEMO: weakref.WeakKeyDictionary[Any, dict[str, Decision]] = weakref.WeakKeyDictionary()
_PROCESS: dict[str, Decision] = {}  # every decision this process used, by "machine | model"


def cache_dir() -> Path:
    """The user cache folder: ``$FREQPURE_CACHE_DIR``, ``$XDG_CACHE_HOME/freqpure`` or ``~/.cache/freqpure``."""
    if os.environ.get("FREQPURE_CACHE_DIR"):
        return Path(os.environ["FREQPURE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "freqpure"


def _cpu_name_and_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "cpu")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    fast = sorted(f for f in flags if f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2"))
    return f"{name} [{' '.join(fast)}]"


def machine_key(device: torch.device | str) -> str:
    """What the timing depends on besides the model: the processor (and its bf16 features), threads, torch."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda {props.name} sm{props.major}{props.minor} torch {torch.__version__}"
    return f"cpu {_cpu_name_and_flags()} threads {torch.get_num_threads()} torch {torch.__version__}"


def model_key(model: Any, args: Sequence[Any]) -> str:
    """The model (class, name, parameter shapes and dtypes) and the input shapes, as a short readable key."""
    shapes = []
    params = getattr(model, "named_parameters", None)
    if callable(params):
        shapes = [(n, tuple(p.shape), str(p.dtype)) for n, p in params()]
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]
    inputs = ",".join("x".join(map(str, a.shape)) for a in args if isinstance(a, Tensor))
    name = getattr(model, "name", None) or type(model).__qualname__
    return f"{name} params {sum(math.prod(s) for _, s, _ in shapes)} #{digest} inputs {inputs}"


def decide_precision(fp32_seconds: float, bf16_seconds: float, margin: float = MARGIN) -> tuple[str, str]:
    """``("bf16", why)`` when bf16 took at most ``1 − margin`` of fp32's time, else ``("fp32", why)``."""
    ratio = fp32_seconds / bf16_seconds if bf16_seconds > 0 else float("inf")
    timing = f"fp32 {fp32_seconds * 1e3:.3g} ms, bf16 {bf16_seconds * 1e3:.3g} ms per call"
    if bf16_seconds <= (1 - margin) * fp32_seconds:
        return "bf16", f"measured: bf16 {ratio:.2f}x as fast as fp32 ({timing})"
    return "fp32", f"measured: bf16 not at least {margin:.0%} faster ({ratio:.2f}x; {timing})"


def time_precisions(fn: Callable[..., Any], args: Sequence[Any], repeats: int = REPEATS,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Best-of-``repeats`` seconds of ``fn(*args)`` in fp32 and under bf16 autocast, interleaved, no gradients.

    After one warm-up call each: when bf16's took more than :data:`CLEARLY_SLOWER` times fp32's, the warm-up
    times are returned (``timed_calls`` 0) and nothing more is run: on a CPU without fast bf16 one bf16 call
    of the bundled UNet takes ~50x an fp32 one (40 s at batch 16 on this project's AMD EPYC), and the answer
    is already clear.
    """
    device = next((a.device for a in args if isinstance(a, Tensor)), torch.device("cpu"))

    def call(precision: str) -> float:
        ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())
        start = clock()
        with ctx:
            fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - start

    best = {"fp32": float("inf"), "bf16": float("inf"), "timed_calls": float(repeats)}
    with torch.no_grad():
        warm = {"fp32": call("fp32"), "bf16": call("bf16")}  # warm-up: allocations, kernels, weight casts
        if warm["bf16"] > CLEARLY_SLOWER * warm["fp32"]:
            return {**warm, "timed_calls": 0.0}
        for r in range(repeats):
            for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                best[precision] = min(best[precision], call(precision))
    return best


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, decision: Decision) -> None:
    """Add ``decision`` to the cache file (atomic replace; a cache that cannot be written is skipped)."""
    try:
        data = _read_cache(path)
        data[key] = asdict(decision)
        write_json_atomic(path, data, indent=1, sort_keys=True, finite=False, newline=False)
    except OSError:
        pass


def measured_precision(model: Any, args: Sequence[Any], device: torch.device | str, *,
                       fn: Callable[..., Any] | None = None,
                       timer: Callable[[Any, Sequence[Any]], dict[str, float]] | None = None) -> Decision:
    """``auto``'s choice for ``model(*args)`` on ``device``: from this process's memo, the cache file, or timed now.

    ``fn``: what to time (default ``model``; e.g. a closure around it); ``model`` names the cache entry.
    ``timer(fn, args) -> {"fp32": s, "bf16": s}`` replaces the timing (tests inject timings).
    """
    device = torch.device(device)
    where = str(device)  # one decision per model object and device for the process, whatever the batch
    try:
        memo = _MEMO.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no per-object memo
        memo = {}
    if where in memo:
        return memo[where]
    machine, mkey = machine_key(device), model_key(model, args)
    key = f"{machine} | {mkey}"
    path = cache_dir() / _CACHE_FILE
    cached = _read_cache(path).get(key)
    if isinstance(cached, dict) and cached.get("choice") in ("fp32", "bf16"):
        decision = Decision(**{**cached, "source": "cache"})
    elif device.type == "cuda" and not torch.cuda.is_bf16_supported():
        decision = Decision("fp32", "this GPU has no bf16", None, None, "unsupported", machine, mkey)
    else:
        times = (timer or time_precisions)(fn or model, args)
        choice, reason = decide_precision(times["fp32"], times["bf16"])
        if times.get("timed_calls", 1) == 0:
            reason += f"; decided on one warm-up call each (bf16 more than {CLEARLY_SLOWER:g}x slower)"
        decision = Decision(choice, reason, times["fp32"], times["bf16"], "measured", machine, mkey)
        _write_cache(path, key, decision)
    memo[where] = decision
    _PROCESS[key] = decision
    return decision


def probe_precision(name: str, device: torch.device | str, batch: int | None = None) -> Decision | None:
    """``auto``'s choice for the registry diffusion model ``name`` before a run loads it: the model is loaded
    and timed on a random batch (``batch`` images; 4 on a CPU, 256 on a GPU). ``None`` if it cannot be loaded."""
    import freqpure

    device = torch.device(device)
    try:
        model = freqpure.load_diffusion(name, device=device).eval().requires_grad_(False)
    except Exception:  # noqa: BLE001 - any failure to load means: no measurement, use the guess
        return None
    size, channels = getattr(model, "image_size", 32), getattr(model, "channels", 3)
    n = batch or (256 if device.type == "cuda" else 4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, size, size, generator=gen).to(device)
    t = torch.full((n,), 500.0, device=device)
    return measured_precision(model, (x, t), device)


def decisions() -> list[dict[str, Any]]:
    """Every ``auto`` decision this process used: choice, reason, timings, source, machine and model."""
    return [asdict(d) for d in _PROCESS.values()]

"""The OpenMP part of freqpure's thread policy; it must run before torch is imported (no torch here).

OpenMP reads its wait policy once, when the library loads. torch's default (threads spin while they
wait for work) makes two threads on a loaded two-core machine several times slower than one, so
freqpure asks for a passive policy (waiting threads sleep) unless the user chose one, or chose
torch's own behaviour with ``FREQPURE_THREAD_POLICY=torch``. Too late once torch is imported (then
nothing is changed).
"""

from __future__ import annotations

import os
import sys


def idle_cores() -> int:
    """Cores available to this process minus the rounded 1-minute load average, at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)) - int(os.getloadavg()[0] + 0.5))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def set_passive_wait_policy() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when it is unset, torch is not loaded yet and the policy is not
    ``torch``; returns whether it did. When at most one core is idle and neither ``OMP_NUM_THREADS`` nor
    ``FREQPURE_THREADS`` is set, also ``OMP_NUM_THREADS=1``, so that torch never starts a second thread
    (measured 14% faster than starting two and then going down to one; benchmarks/RESULTS.md)."""
    if os.environ.get("FREQPURE_THREAD_POLICY", "").lower() == "torch":
        return False
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "OMP_NUM_THREADS" not in os.environ and "FREQPURE_THREADS" not in os.environ and idle_cores() == 1:
        os.environ["OMP_NUM_THREADS"] = "1"
    return True

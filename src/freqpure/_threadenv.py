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


def set_passive_wait_policy() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when it is unset, torch is not loaded yet and the policy is not
    ``torch``; returns whether it did."""
    if os.environ.get("FREQPURE_THREAD_POLICY", "").lower() == "torch":
        return False
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True

"""freqpure: diffusion-based adversarial purification from the frequency domain.

Three lines to defend a classifier::

    import freqpure
    purifier = freqpure.FreqPure(freqpure.load_diffusion("cifar10-ddpm-small"))
    defended = freqpure.PurifiedClassifier(my_classifier, purifier, ensemble=10)
"""

# Thread policy, OpenMP part: before anything imports torch (freqpure._threadenv; docs/usage.md, "Threads").
from freqpure._threadenv import set_passive_wait_policy

set_passive_wait_policy()

from freqpure import spectral  # noqa: E402
from freqpure.purifiers import DiffPure, FreqPure, PurifiedClassifier, Purifier  # noqa: E402
from freqpure.samplers import StepNoise  # noqa: E402
from freqpure.schedules import VPSDE, LinearBetaSchedule, PurificationRound, parse_rounds  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DiffPure",
    "FreqPure",
    "LinearBetaSchedule",
    "PurificationRound",
    "PurifiedClassifier",
    "Purifier",
    "StepNoise",
    "VPSDE",
    "build_purifier",
    "list_models",
    "load_classifier",
    "load_diffusion",
    "model_info",
    "parse_rounds",
    "preset",
    "spectral",
]


def __getattr__(name: str):  # lazy: the registry imports the model zoo only when asked
    if name in ("load_diffusion", "load_classifier", "list_models", "model_info"):
        from freqpure.models import registry

        return getattr(registry, name)
    if name == "preset":
        from freqpure.config import preset

        return preset
    if name == "build_purifier":
        from freqpure.config import build_purifier

        return build_purifier
    raise AttributeError(f"module 'freqpure' has no attribute {name!r}")

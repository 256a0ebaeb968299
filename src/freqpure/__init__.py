"""freqpure: diffusion-based adversarial purification from the frequency domain.

Three lines to defend a classifier::

    import freqpure
    purifier = freqpure.FreqPure(freqpure.load_diffusion("cifar10-ddpm-small"))
    defended = freqpure.PurifiedClassifier(my_classifier, purifier, ensemble=10)
"""

from freqpure import spectral
from freqpure.purifiers import DiffPure, FreqPure, PurifiedClassifier, Purifier
from freqpure.samplers import StepNoise
from freqpure.schedules import VPSDE, LinearBetaSchedule, PurificationRound, parse_rounds

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
    "list_models",
    "load_classifier",
    "load_diffusion",
    "model_info",
    "parse_rounds",
    "spectral",
]


def __getattr__(name: str):  # lazy: the registry imports the model zoo only when asked
    if name in ("load_diffusion", "load_classifier", "list_models", "model_info"):
        from freqpure.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'freqpure' has no attribute {name!r}")

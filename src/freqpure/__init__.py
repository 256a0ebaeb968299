"""freqpure: diffusion-based adversarial purification from the frequency domain.

Three lines to defend a classifier::

    import freqpure
    purifier = freqpure.FreqPure(freqpure.load_diffusion("cifar10-ddpm-small"))
    defended = freqpure.PurifiedClassifier(my_classifier, purifier, ensemble=10)
"""

__version__ = "0.1.0"

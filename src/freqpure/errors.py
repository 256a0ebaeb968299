"""User-facing errors.

Everything freqpure raises because of what a user gave it (an argument, a config value, an image, a
file, a checkpoint, a run folder) is a :class:`FreqpureError`. The command line prints these as one
line and exits with status 2; any other exception is a bug in freqpure or in a library below it and
prints its full traceback. Each class also derives from the matching built-in exception, so
``except ValueError`` keeps working for callers who used it before.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DependencyError",
    "FreqpureError",
    "NotFoundError",
    "OutputExistsError",
    "RunFolderError",
    "UnknownNameError",
    "UsageError",
]


class FreqpureError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class UsageError(FreqpureError, ValueError):
    """An argument, config value or input tensor/image is invalid (the message names it)."""


class CheckpointError(FreqpureError, RuntimeError):
    """A checkpoint or weights file is unreadable, corrupt, unsafe or does not fit the model."""


class NotFoundError(FreqpureError, FileNotFoundError):
    """A file, folder, data set or checkpoint the user named does not exist."""


class OutputExistsError(FreqpureError, FileExistsError):
    """Writing would overwrite a file that freqpure did not create for this run."""


class RunFolderError(FreqpureError, RuntimeError):
    """A run folder is held by another process or holds records of another configuration."""


class DependencyError(FreqpureError, RuntimeError):
    """An optional dependency is missing (the message says which extra to install)."""


class UnknownNameError(FreqpureError, KeyError):
    """An unknown model, attack, method or key name (the message lists the valid ones)."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""

"""Errors that name what is wrong: the file, the row or the config key, and the problem."""
from __future__ import annotations

import sys


class DataError(ValueError):
    """Bad input data: the message names the file, the row (1-based) and the problem."""


class ConfigError(ValueError):
    """Bad configuration: the message names the config key."""


class CacheMismatchError(RuntimeError):
    """A cached artefact (reference log-probs, embeddings) belongs to other data or another model."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf."""


class WriteError(OSError):
    """An output could not be written (disk full, permission denied); nothing was left under its name."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # the OS's own words ("No space left on device"), for an enclosing write


# What a user can act on from the message alone: a command line prints it as one line, not a traceback.
USER_ERRORS = (ConfigError, DataError, CacheMismatchError, TrainingDivergedError, WriteError)


def run_cli(main, argv=None) -> int:
    """Run a command line's `main(argv)`: a USER_ERRORS error becomes "error: ..." on stderr and status 1."""
    try:
        return main(argv) or 0
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

"""The one user-facing error type of :mod:`fsrf`."""

from __future__ import annotations


class FSRFError(ValueError):
    """Bad user input: a config key, a data file, a checkpoint, an argument.

    The message is one line that names the file, key or value and what was
    expected. The CLI prints it and exits with status 2; internal bugs stay
    ordinary tracebacks.
    """


class NonFiniteLossError(FSRFError):
    """A loss term became NaN or infinite; the message names the epoch and the term."""

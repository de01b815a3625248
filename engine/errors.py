"""Errors a person can act on.

`str(err)` of a `DemixerError` is one sentence that names the file and the reason; the CLI and
the GUI show it as is, never a traceback.
"""

from __future__ import annotations


class DemixerError(Exception):
    """A failure with a message fit to show to the user."""


class AudioDecodeError(DemixerError):
    """The input file cannot be read as audio, or its audio is unusable (NaN/Inf, empty)."""


class ModelUnavailableError(DemixerError):
    """The model's checkpoint is neither local nor downloadable right now."""


class ChecksumError(DemixerError):
    """A checkpoint's bytes do not match the catalogue's SHA-256."""


class OutputExistsError(DemixerError):
    """A stem file exists already and `--overwrite` was not given."""


class UsageError(DemixerError):
    """A command line that cannot work (exit code 2, reported before any work)."""


class Cancelled(Exception):
    """A job was cancelled through its `threading.Event`; not an error for the user."""

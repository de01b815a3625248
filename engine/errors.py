"""Errors a person can act on.

`str(err)` of a `DemixerError` is one sentence that names the file and the reason; the CLI and
the GUI show it as is, never a traceback.
"""

from __future__ import annotations

from typing import Protocol


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
    """A job was cancelled through its `CancelFlag`; not an error for the user."""


class CancelFlag(Protocol):
    """What cancellable work polls: a `threading.Event`, or a `multiprocessing` one (the app's
    worker process is cancelled from the GUI's)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def check_cancel(cancel: CancelFlag | None, message: str = "") -> None:
    """The one cancel check (between chunks, blocks, stages): raise `Cancelled(message)` if
    `cancel` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(message) if message else Cancelled()

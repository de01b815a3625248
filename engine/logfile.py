"""The log of unexpected failures: `data_dir()/logs/demixer.log`, rotating (3 x 1 MB).

A failure Demixer foresees is one sentence (`DemixerError`). Anything else is a bug or a
surprise from a library: the person sees one line naming this log, and the log keeps the whole
traceback for a bug report. If the data folder cannot be written, the system's temporary
folder takes the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import tempfile
import threading
from pathlib import Path

LOG_NAME = "demixer.log"
_lock = threading.Lock()
_logger: logging.Logger | None = None
_path: Path | None = None


def _open_log() -> tuple[logging.Logger, Path]:
    """The logger, writing to the data folder's log (re-opened if the folder changed)."""
    global _logger, _path
    with _lock:
        logger = logging.getLogger("demixer.failures")
        logger.propagate = False  # the person gets one line, not the traceback
        logger.setLevel(logging.ERROR)
        folders = _candidate_folders()
        if _logger is None or _path is None or _path.parent != folders[0]:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
            _path = _attach_handler(logger, folders)
            _logger = logger
        return logger, _path


def _candidate_folders() -> list[Path]:
    from engine.errors import DemixerError
    from engine.store import data_subdir

    folders: list[Path] = []
    try:
        folders.append(data_subdir("logs"))
    except (DemixerError, OSError):
        pass
    folders.append(Path(tempfile.gettempdir()))
    return folders


def _attach_handler(logger: logging.Logger, folders: list[Path]) -> Path:
    for folder in folders:
        path = folder / LOG_NAME
        try:
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=1 << 20,
                                                           backupCount=3, encoding="utf-8")
        except OSError:
            continue
        handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(message)s"))
        logger.addHandler(handler)
        return path
    logger.addHandler(logging.NullHandler())
    return Path(tempfile.gettempdir()) / LOG_NAME


def log_unexpected(context: str, error: BaseException) -> Path:
    """Log `error` with its traceback under `context` (e.g. the input file); the log's path."""
    logger, path = _open_log()
    logger.error("%s: unexpected %s", context, type(error).__name__, exc_info=error)
    for handler in logger.handlers:
        handler.flush()
    return path


def unexpected_message(context: str, error: BaseException) -> str:
    """The one line for the person: what failed, the error in brief, and where the log is."""
    path = log_unexpected(context, error)
    brief = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    what = f"{type(error).__name__}: {brief}" if brief else type(error).__name__
    return f"{context}: failed unexpectedly ({what}); the details are in {path}."

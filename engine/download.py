"""Resumable, verified HTTPS download of one checkpoint file.

`download_file(url, dest, sha256=...)` streams `url` into `dest.th.part`, resuming an existing
`.part` with an HTTP `Range` request, retries a transfer that ends early, reports progress per
block, stops on a `threading.Event`, checks size and SHA-256, and only then moves the file into
place with `os.replace` (atomic: `dest` is either absent or complete and verified). Everything
that can go wrong becomes one `DemixerError` sentence naming the file, its URL and the folder.

A watchdog thread per transfer ends a blocked read at once when the download is cancelled, or
when fewer than `STALL_MIN_BYTES` arrived in `STALL_S` seconds (a server trickling a byte now
and then would otherwise hold it forever): a stalled transfer is retried from where it got to.
A server sending more than the catalogue's size is stopped at that size. Only https:// (and
file://) URLs are fetched: the catalogue's prefix-only digests could not stop a tampered file
sent over plain http (DEMIXER_ALLOW_HTTP=1 allows it, for tests on loopback).

TLS uses certifi's CA bundle: a frozen macOS app has no usable system CA path for OpenSSL and
otherwise fails with CERTIFICATE_VERIFY_FAILED.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import certifi

from engine.errors import CancelFlag, Cancelled, ChecksumError, ModelUnavailableError, check_cancel

BLOCK_BYTES = 256 * 1024  # at most this much per read (a read returns what has arrived)
RETRY_DELAY_S = 0.5  # grows linearly per attempt that made no progress; tests set it to 0
STALL_S = 30.0  # a transfer that got fewer than STALL_MIN_BYTES in this long is stalled
STALL_MIN_BYTES = 16 * 1024
WATCH_EVERY_S = 0.1
ENV_ALLOW_HTTP = "DEMIXER_ALLOW_HTTP"
_USER_AGENT = "Demixer/0.1 (+model download)"


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report: bytes of `file` on disk so far, of `total` (None if unknown)."""

    file: str
    done: int
    total: int | None
    bytes_per_s: float


ProgressCallback = Callable[[DownloadProgress], None]


class _Truncated(Exception):
    """The server closed the connection before the announced length; worth a resume."""


class _RangeRejected(_Truncated):
    """The server cannot continue our `.part` (416, or a different range): start over."""


class _DiskError(Exception):
    """Writing the `.part` failed (full disk, no permission): not the network's fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Fatal(Exception):
    """A failure that another attempt will not fix (e.g. HTTP 404); carries the reason."""


class _Stalled(_Truncated):
    """Too few bytes for too long: the watchdog ended the read; worth a resume."""


class _Oversize(_Fatal):
    """The server sent more than the file's known size: not this file."""


# --- hashing -----------------------------------------------------------------------------

# (resolved path, size, mtime_ns, ctime_ns, inode) -> hex digest. Hashing 85 MB takes ~0.3 s
# and the store re-checks files each time a model is resolved or loaded; a replaced or
# rewritten file changes its stat key, so a stale digest is not returned for other bytes.
_digests: dict[tuple[str, int, int, int, int], str] = {}
_digests_lock = threading.Lock()


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def file_sha256(path: Path) -> str:
    """The full SHA-256 (hex) of `path`, memoised on its size, mtime and inode."""
    key = _stat_key(path)
    with _digests_lock:
        cached = _digests.get(key)
    if cached is not None:
        return cached
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    digest = sha.hexdigest()
    with _digests_lock:
        _digests[key] = digest
    return digest


def digest_matches(digest: str, sha256: str | None, sha256_prefix: str | None) -> bool:
    """True if `digest` matches the full `sha256`, or else starts with `sha256_prefix`."""
    if sha256:
        return digest == sha256.lower()
    if sha256_prefix:
        return digest.startswith(sha256_prefix.lower())
    return True


# --- HTTP --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse:
    """GET `url` from byte `start` on (a `Range` request when resuming)."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if start > 0:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout, context=_ssl_context())
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and start > 0:
            raise _RangeRejected("range not satisfiable") from exc  # caller drops the .part
        if 500 <= exc.code < 600 or exc.code == 429:
            raise  # transient: retried
        raise _Fatal(f"HTTP {exc.code} {exc.reason}") from exc


def _content_range_total(header: str | None) -> int | None:
    """The total of `Content-Range: bytes a-b/total`, None if absent or `*`."""
    if not header or "/" not in header:
        return None
    total = header.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _response_start(response: http.client.HTTPResponse, start: int) -> int:
    """Where the body of `response` begins: `start` for a matching 206, else 0."""
    if response.status == 206:
        header = response.headers.get("Content-Range", "")
        first = header.split(" ", 1)[-1].split("-", 1)[0].strip()
        if first.isdigit() and int(first) == start:
            return start
        raise _RangeRejected(f"server answered range {header!r} for bytes={start}-")
    return 0  # 200: the server ignored Range and sends the whole file


def _response_total(response: http.client.HTTPResponse, start: int) -> int | None:
    """The full file size announced by `response`, if any."""
    if response.status == 206:
        total = _content_range_total(response.headers.get("Content-Range"))
        if total is not None:
            return total
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


# --- one transfer ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    url: str
    part: Path
    name: str
    size: int | None
    progress: ProgressCallback | None
    cancel: CancelFlag | None
    timeout: float


def _part_size(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


class _Watchdog:
    """Ends a blocked read of `response` (shuts its socket down) on cancel or on a stall.

    NB: threads. `progress()` runs on the downloading thread, the check on the watchdog's;
    both only store plain values (atomic in CPython); `reason` is read after `stop()`."""

    def __init__(self, response: http.client.HTTPResponse, job: _Job, done: int) -> None:
        self.sock = _socket_of(response)
        self.job = job
        self.mark_bytes, self.mark_time = done, time.monotonic()
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="demixer-download-watch",
                                        daemon=True)
        self._thread.start()

    def progress(self, done: int) -> None:
        if done - self.mark_bytes >= STALL_MIN_BYTES:
            self.mark_bytes, self.mark_time = done, time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            if self.job.cancel is not None and self.job.cancel.is_set():
                self.reason = "cancel"
            elif time.monotonic() - self.mark_time > STALL_S:
                self.reason = (f"the server sent less than {STALL_MIN_BYTES // 1024} KB in "
                               f"{STALL_S:.0f} s")
            if self.reason is not None:
                _shutdown(self.sock)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _socket_of(response: http.client.HTTPResponse) -> socket.socket | None:
    raw = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
        except OSError:
            pass


def _copy(response: http.client.HTTPResponse, out_path: Path, start: int,
          total: int | None, job: _Job) -> int:
    """Append the body of `response` to `out_path` (truncated to `start`); bytes on disk."""
    try:
        out = open(out_path, "ab" if start > 0 else "wb")
    except OSError as exc:
        raise _DiskError(exc) from exc
    watchdog = _Watchdog(response, job, start)
    try:
        with out:
            return _read_body(response, out, start, total, job, watchdog)
    except (OSError, http.client.HTTPException, ValueError):
        if watchdog.reason is None:
            raise
        return -1  # the watchdog broke the connection: see its reason below
    finally:
        watchdog.stop()
        if watchdog.reason == "cancel":
            raise Cancelled(f"Download of {job.name} cancelled.")
        if watchdog.reason is not None:
            raise _Stalled(watchdog.reason)


def _read_body(response: http.client.HTTPResponse, out: BinaryIO, start: int,
               total: int | None, job: _Job, watchdog: _Watchdog) -> int:
    done, fresh, began = start, 0, time.monotonic()
    while True:
        # NB: a cancel leaves the .part on disk for a later resume
        check_cancel(job.cancel, f"Download of {job.name} cancelled.")
        want = BLOCK_BYTES if job.size is None else min(BLOCK_BYTES, job.size + 1 - done)
        block = response.read1(max(want, 1))  # what has arrived, without waiting for more
        if not block:
            return done
        if job.size is not None and done + len(block) > job.size:
            raise _Oversize(f"the server sent more than the expected {job.size} bytes")
        try:
            out.write(block)
        except OSError as exc:
            raise _DiskError(exc) from exc
        done, fresh = done + len(block), fresh + len(block)
        watchdog.progress(done)
        if job.progress is not None:
            speed = fresh / max(time.monotonic() - began, 1e-6)
            job.progress(DownloadProgress(job.name, done, total, speed))


def _transfer(job: _Job) -> None:
    """One HTTP request that continues `job.part`; `_Truncated` if the body ends early."""
    start = _part_size(job.part)
    response = _open(job.url, start, job.timeout)
    with response:
        start = _response_start(response, start)
        total = _response_total(response, start) or job.size
        if job.progress is not None:
            job.progress(DownloadProgress(job.name, start, total, 0.0))
        done = _copy(response, job.part, start, total, job)
    if total is not None and done < total:
        # http.client returns b"" rather than raising when the peer closes early.
        raise _Truncated(f"connection closed after {done} of {total} bytes")


# --- retries -----------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """A short, lower-case reason for a network failure ("connection refused", "timed out")."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return _reason(exc.reason) if isinstance(exc.reason, BaseException) else str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _attempt(job: _Job) -> str | None:
    """Run one transfer; None when the `.part` is complete, else why it is not."""
    try:
        _transfer(job)
        return None
    except _RangeRejected as exc:
        job.part.unlink(missing_ok=True)  # cannot be continued; the next attempt restarts
        return str(exc)
    except _Oversize:
        job.part.unlink(missing_ok=True)  # not the file we want: nothing worth keeping
        raise
    except _Fatal:
        raise
    except _Truncated as exc:
        return str(exc)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        # URLError/HTTPError are OSErrors too; local disk errors arrive as _DiskError.
        return _reason(exc)


def _fetch(job: _Job, attempts: int) -> None:
    """Transfer until the `.part` holds the whole file; `_Fatal` with the last reason if not."""
    reason = "no attempt made"
    for attempt in range(1, max(1, attempts) + 1):
        check_cancel(job.cancel, f"Download of {job.name} cancelled.")
        before = _part_size(job.part)
        if job.size is not None and before >= job.size:
            if before == job.size:
                return  # complete .part from an interrupted run: just verify it
            job.part.unlink()  # longer than the file can be: not this file
            before = 0
        failure = _attempt(job)
        if failure is None:
            return
        reason = failure
        if attempt < attempts and _part_size(job.part) <= before:
            # No progress: back off a little (a resumed transfer retries at once).
            delay = RETRY_DELAY_S * attempt
            if job.cancel is not None:
                job.cancel.wait(delay)
            else:
                time.sleep(delay)
    raise _Fatal(reason)


# --- the public entry point --------------------------------------------------------------


def _verify_part(job: _Job, sha256: str | None, sha256_prefix: str | None, label: str) -> str:
    """Check size and digest of the finished `.part`; delete it and raise on mismatch."""
    actual = _part_size(job.part)
    if job.size is not None and actual != job.size:
        job.part.unlink(missing_ok=True)
        raise ChecksumError(f"The download of {label} {job.name} from {job.url} has {actual} "
                            f"bytes instead of {job.size}; it was deleted, please try again.")
    digest = file_sha256(job.part)
    if not digest_matches(digest, sha256, sha256_prefix):
        job.part.unlink(missing_ok=True)
        expected = (sha256 or sha256_prefix or "")[:8]
        raise ChecksumError(f"The download of {label} {job.name} from {job.url} does not match "
                            f"its SHA-256 ({digest[:8]}… instead of {expected}…); it was "
                            f"deleted, please try again or download it by hand.")
    return digest


def _disk_message(error: OSError, label: str, dest: Path, size: int | None) -> str:
    if error.errno == errno.ENOSPC:
        need = f" (it needs {size / 1e6:.0f} MB)" if size else ""
        return (f"The disk is full: cannot save {label} {dest.name} in {dest.parent}{need}; "
                f"free some space and try again.")
    return (f"Cannot save {label} {dest.name} in {dest.parent} ({_reason(error)}); check that "
            f"the folder is writable.")


def _check_scheme(url: str, label: str, dest: Path) -> None:
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("https", "file") or (scheme == "http" and os.environ.get(ENV_ALLOW_HTTP) == "1"):
        return
    raise ModelUnavailableError(
        f"Refusing to download {label} {dest.name} from {url}: only https:// addresses are "
        f"used (plain http could be tampered with on the way); download it by hand and put "
        f"it in {dest.parent}.")


def download_file(url: str, dest: Path, *, sha256: str | None, sha256_prefix: str | None = None,
                  size: int | None = None, progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None, timeout: float = 30.0,
                  attempts: int = 3, label: str = "checkpoint") -> Path:
    """Download `url` to `dest`, verified; return `dest`.

    `sha256` is the full hex digest (or None, then `sha256_prefix` is checked, if given);
    `size` the expected byte count, if known. `label` names the file in messages
    ("htdemucs_6s checkpoint"). Raises `Cancelled` (the `.part` is kept for a resume),
    `ChecksumError` (the `.part` is deleted) or `ModelUnavailableError` (network or disk).
    """
    dest = Path(dest)
    _check_scheme(url, label, dest)
    job = _Job(url=url, part=dest.with_suffix(dest.suffix + ".part"), name=dest.name,
               size=size, progress=progress, cancel=cancel, timeout=timeout)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch(job, attempts)
        digest = _verify_part(job, sha256, sha256_prefix, label)
        os.replace(job.part, dest)
    except _Fatal as exc:
        raise ModelUnavailableError(
            f"Cannot download {label} {dest.name} from {url} ({exc}); download it by hand "
            f"and put it in {dest.parent}.") from None
    except (_DiskError, OSError) as exc:
        error = exc.error if isinstance(exc, _DiskError) else exc
        if error.errno == errno.ENOSPC:
            job.part.unlink(missing_ok=True)  # give the space back; nothing to resume into
        raise ModelUnavailableError(_disk_message(error, label, dest, size)) from None
    with _digests_lock:
        _digests[_stat_key(dest)] = digest  # os.replace keeps inode and mtime
    return dest

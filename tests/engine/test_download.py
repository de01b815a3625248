"""engine.download against a threaded HTTP server on 127.0.0.1 that supports Range requests.

`FileServer` (also used by test_store.py) serves byte strings and can misbehave on purpose:
close the connection mid-body, ignore Range, answer 404. It records every request's path and
Range header so tests can assert how the client resumed.
"""

from __future__ import annotations

import errno
import hashlib
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import certifi
import pytest

from engine import download
from engine.download import DownloadProgress, download_file
from engine.errors import Cancelled, ChecksumError, ModelUnavailableError


class FileServer:
    """A loopback HTTP server for `files` ({url path: bytes}) with fault injection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.truncate_after: list[int] = []  # per coming request: body bytes before closing
        self.ignore_range = False
        self.trickle_s: float | None = None  # send the body a byte at a time, this far apart
        self.stop_sending = threading.Event()  # ends a trickle
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.root}/{name}"

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server._serve(self)

            def log_message(self, *args: Any) -> None:
                pass  # keep test output clean

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        range_header = h.headers.get("Range")
        self.requests.append((h.path, range_header))
        data = self.files.get(h.path.lstrip("/"))
        if data is None:
            h.send_error(404, "Not Found")
            return
        start = 0
        if range_header and not self.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                h.send_error(416, "Range Not Satisfiable")
                return
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        body = data[start:]
        if self.truncate_after:
            body = body[: self.truncate_after.pop(0)]
            h.close_connection = True  # the client sees EOF before Content-Length
        try:
            if self.trickle_s is None:
                h.wfile.write(body)
                h.wfile.flush()
                return
            for i in range(len(body)):  # a server that never quite stops, never quite sends
                if self.stop_sending.wait(self.trickle_s):
                    return
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
        except OSError:
            pass  # the client hung up (cancel): nothing to do


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment must not intercept loopback requests."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server(no_proxy: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)  # no back-off sleeps in tests
    srv = FileServer().start()
    yield srv
    srv.stop_sending.set()
    srv.stop()


PAYLOAD = random.Random(7).randbytes(700_000)  # ~3 blocks of 256 KiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
NAME = f"abcd1234-{PAYLOAD_SHA[:8]}.th"


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_good_file_lands_verified_with_progress(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD
    dest = tmp_path / "models" / NAME  # the folder is created on demand
    reports: list[DownloadProgress] = []
    out = download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD),
                        progress=reports.append)
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert reports[-1].done == reports[-1].total == len(PAYLOAD)
    assert all(r.file == NAME and r.bytes_per_s >= 0 for r in reports)
    assert len(reports) >= 3  # one per block, not just at the end
    assert download.file_sha256(dest) == PAYLOAD_SHA


def test_prefix_only_digest_is_accepted_and_checked(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD
    ok = download_file(server.url(NAME), tmp_path / "a.th", sha256=None,
                       sha256_prefix=PAYLOAD_SHA[:8])
    assert ok.read_bytes() == PAYLOAD
    with pytest.raises(ChecksumError):
        download_file(server.url(NAME), tmp_path / "b.th", sha256=None, sha256_prefix="00000000")
    assert not (tmp_path / "b.th").exists() and not _part(tmp_path / "b.th").exists()


def test_corrupt_file_is_rejected_and_removed(server: FileServer, tmp_path: Path) -> None:
    corrupt = bytearray(PAYLOAD)
    corrupt[1234] ^= 0xFF
    server.files[NAME] = bytes(corrupt)
    dest = tmp_path / NAME
    with pytest.raises(ChecksumError) as err:
        download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert NAME in str(err.value) and "\n" not in str(err.value)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_wrong_size_is_rejected(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD[:-10]
    dest = tmp_path / NAME
    with pytest.raises(ChecksumError, match="bytes instead of"):
        download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert not dest.exists() and not _part(dest).exists()


def test_truncated_transfer_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD
    server.truncate_after = [300_000]  # the first response closes mid-body
    dest = tmp_path / NAME
    download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [(f"/{NAME}", None), (f"/{NAME}", "bytes=300000-")]


def test_truncated_without_known_size_still_resumes(server: FileServer, tmp_path: Path) -> None:
    # size=None: the client must trust Content-Length to notice the early close.
    server.files[NAME] = PAYLOAD
    server.truncate_after = [100_000, 200_000]
    dest = tmp_path / NAME
    download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, attempts=3)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=100000-", "bytes=300000-"]


def test_gives_up_after_attempts(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD
    server.truncate_after = [1000, 1000]
    dest = tmp_path / NAME
    with pytest.raises(ModelUnavailableError, match="connection closed"):
        download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, attempts=2)
    assert len(server.requests) == 2
    assert _part(dest).stat().st_size == 2000  # kept: the next run resumes from here


def test_existing_part_is_resumed(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD
    dest = tmp_path / NAME
    _part(dest).write_bytes(PAYLOAD[:400_000])
    reports: list[DownloadProgress] = []
    download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, progress=reports.append)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [(f"/{NAME}", "bytes=400000-")]
    assert reports[0].done == 400_000 and reports[0].total == len(PAYLOAD)


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD
    server.ignore_range = True
    dest = tmp_path / NAME
    _part(dest).write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [(f"/{NAME}", "bytes=5000-")]


def test_complete_part_needs_no_request(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    _part(dest).write_bytes(PAYLOAD)  # finished, but the app quit before the rename
    download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and server.requests == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_gone_names_file_url_and_folder(no_proxy: None, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)
    url = f"http://127.0.0.1:{_closed_port()}/{NAME}"
    dest = tmp_path / "models" / NAME
    with pytest.raises(ModelUnavailableError) as err:
        download_file(url, dest, sha256=PAYLOAD_SHA, label="htdemucs_6s checkpoint",
                      timeout=5.0)
    message = str(err.value)
    assert "\n" not in message
    assert f"htdemucs_6s checkpoint {NAME}" in message
    assert url in message and str(dest.parent) in message
    assert "connection refused" in message
    assert not dest.exists()


def test_http_404_is_not_retried(server: FileServer, tmp_path: Path) -> None:
    url = server.url(NAME)
    with pytest.raises(ModelUnavailableError, match="HTTP 404") as err:
        download_file(url, tmp_path / NAME, sha256=PAYLOAD_SHA)
    assert url in str(err.value)
    assert len(server.requests) == 1


def test_cancel_keeps_part_for_a_later_resume(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD
    dest = tmp_path / NAME
    cancel = threading.Event()

    def cancel_after_first_block(p: DownloadProgress) -> None:
        if p.done > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA,
                      progress=cancel_after_first_block, cancel=cancel)
    assert not dest.exists()
    kept = _part(dest).stat().st_size
    assert 0 < kept < len(PAYLOAD)
    cancel.clear()
    download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, cancel=cancel)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == (f"/{NAME}", f"bytes={kept}-")


def test_cancel_before_start_sends_nothing(server: FileServer, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        download_file(server.url(NAME), tmp_path / NAME, sha256=PAYLOAD_SHA, cancel=cancel)
    assert server.requests == []


class _FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_one_sentence(server: FileServer, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    server.files[NAME] = PAYLOAD
    monkeypatch.setattr(download, "open", lambda *a, **k: _FullDisk(), raising=False)
    dest = tmp_path / NAME
    with pytest.raises(ModelUnavailableError, match="disk is full") as err:
        download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    assert not dest.exists()


def test_tls_uses_certifi_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    real = ssl.create_default_context

    def spy(*args: Any, cafile: str | None = None, **kwargs: Any) -> ssl.SSLContext:
        seen.append(cafile)
        return real(*args, cafile=cafile, **kwargs)

    download._ssl_context.cache_clear()
    monkeypatch.setattr(ssl, "create_default_context", spy)
    try:
        context = download._ssl_context()
    finally:
        download._ssl_context.cache_clear()
    assert seen == [certifi.where()]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_trickling_server_is_given_up_on(server: FileServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte every 0.2 s used to hold a download forever (the block read waited for
    256 KiB; the timeout is per receive). Now: too little for STALL_S -> retried, then one
    sentence."""
    monkeypatch.setattr(download, "STALL_S", 0.6)
    server.files[NAME] = PAYLOAD
    server.trickle_s = 0.2
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        download_file(server.url(NAME), tmp_path / NAME, sha256=PAYLOAD_SHA, attempts=2)
    assert time.monotonic() - t0 < 10
    assert str(err.value) == (
        f"Cannot download checkpoint {NAME} from {server.url(NAME)} (the server sent less "
        f"than 16 KB in 1 s); download it by hand and put it in {tmp_path}.")
    assert len(server.requests) == 2  # the stall was retried once, as a resume
    assert server.requests[1][1] is not None and server.requests[1][1].startswith("bytes=")


def test_cancel_works_while_a_read_is_waiting(server: FileServer, tmp_path: Path) -> None:
    server.files[NAME] = PAYLOAD
    server.trickle_s = 5.0  # nothing arrives for seconds
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        download_file(server.url(NAME), tmp_path / NAME, sha256=PAYLOAD_SHA, cancel=cancel)
    assert time.monotonic() - t0 < 2.0


def test_a_server_sending_too_much_is_stopped_at_the_size(server: FileServer,
                                                          tmp_path: Path) -> None:
    """A server streaming more than the catalogue's size would fill the disk."""
    server.files[NAME] = PAYLOAD + bytes(3_000_000)
    dest = tmp_path / NAME
    with pytest.raises(ModelUnavailableError) as err:
        download_file(server.url(NAME), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert f"the server sent more than the expected {len(PAYLOAD)} bytes" in str(err.value)
    assert "\n" not in str(err.value)
    assert not dest.exists() and not _part(dest).exists()
    assert len(server.requests) == 1  # not retried: another try gets the same


def test_plain_http_is_refused_unless_allowed(server: FileServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server.files[NAME] = PAYLOAD
    monkeypatch.delenv(download.ENV_ALLOW_HTTP, raising=False)
    with pytest.raises(ModelUnavailableError) as err:
        download_file(server.url(NAME), tmp_path / NAME, sha256=PAYLOAD_SHA)
    assert str(err.value).startswith(f"Refusing to download checkpoint {NAME} from "
                                     f"{server.url(NAME)}: only https:// addresses are used")
    assert server.requests == []

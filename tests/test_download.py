"""The resuming archive download, against a local HTTP server (no test reaches the network)."""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import urllib3

from ser.data import download
from ser.data.download import DownloadError, fetch_archive

pytestmark = pytest.mark.timeout(60)

NAME = "archive.zip"


def _make_archive() -> bytes:
    """A real zip of a few hundred KB: several chunks, so progress and resumption are exercised."""
    rng = random.Random(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for actor in (1, 2):
            # Random bytes: stored as is, so the archive stays as large as the data.
            zf.writestr(f"Actor_{actor:02d}/03-01-01-01-01-01-{actor:02d}.wav", rng.randbytes(150_000))
    return buffer.getvalue()


ARCHIVE = _make_archive()
MD5 = "md5:" + hashlib.md5(ARCHIVE).hexdigest()


@dataclass
class ServerState:
    """What the server does, set by each test, and what it saw."""

    payload: bytes = ARCHIVE
    ignore_range: bool = False
    # Byte counts after which to drop the connection, one per request, in order; then serve fully.
    drop_after: list[int] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    # http.server's SimpleHTTPRequestHandler knows no Range: this one does, as Zenodo does.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        state: ServerState = self.server.state
        with state.lock:
            state.requests.append({"path": self.path, "range": self.headers.get("Range")})
            drop = state.drop_after.pop(0) if state.drop_after else None
        if self.path != f"/{NAME}":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, start = state.payload, 0
        requested = self.headers.get("Range")
        if requested and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop is not None:
            # Promise the whole body, send part of it, hang up: a connection lost mid-transfer.
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(monkeypatch):
    """A local server on 127.0.0.1 (a free port); yields (base URL, its state)."""
    # A proxy set in the environment must not see requests meant for this server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{NAME}", httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _fetch(dest, url, known_hash=MD5, progress=False):
    return fetch_archive(dest, url=url, known_hash=known_hash, filename=NAME, progress=progress)


def _part(dest):
    return dest / (NAME + ".part")


def _assert_only_archive(dest):
    """The verified archive and nothing else: no .part, no temporary file left by pooch."""
    assert sorted(p.name for p in dest.iterdir()) == [NAME]
    assert (dest / NAME).read_bytes() == ARCHIVE
    with zipfile.ZipFile(dest / NAME) as zf:
        assert zf.testzip() is None


def test_download_verifies_and_leaves_no_part(server, tmp_path):
    url, state = server
    dest = tmp_path / "data"  # does not exist yet
    path = _fetch(dest, url)
    assert path == (dest / NAME).resolve()
    _assert_only_archive(dest)
    assert len(state.requests) == 1 and state.requests[0]["range"] is None


def test_second_call_makes_no_request(server, tmp_path):
    url, state = server
    first = _fetch(tmp_path, url)
    second = _fetch(tmp_path, url)
    assert first == second
    assert len(state.requests) == 1


def test_existing_verified_file_needs_no_server(tmp_path):
    (tmp_path / NAME).write_bytes(ARCHIVE)
    # Nothing listens there: any request would fail.
    path = _fetch(tmp_path, f"http://127.0.0.1:{_closed_port()}/{NAME}")
    assert path.read_bytes() == ARCHIVE


def test_bad_checksum_deletes_everything(server, tmp_path):
    url, _ = server
    wrong = "md5:" + "0" * 32
    with pytest.raises(DownloadError) as info:
        _fetch(tmp_path, url, known_hash=wrong)
    message = str(info.value)
    assert "\n" not in message
    assert "0" * 32 in message and MD5.split(":")[1] in message
    assert "deleted" in message
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    url, state = server
    cut = 100_000
    state.drop_after = [cut]
    with pytest.raises(DownloadError) as info:
        _fetch(tmp_path, url)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "resume" in message
    assert not (tmp_path / NAME).exists()
    assert _part(tmp_path).read_bytes() == ARCHIVE[:cut]

    _fetch(tmp_path, url)
    assert [r["range"] for r in state.requests] == [None, f"bytes={cut}-"]
    _assert_only_archive(tmp_path)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url, state = server
    state.ignore_range = True
    state.drop_after = [70_000]
    with pytest.raises(DownloadError):
        _fetch(tmp_path, url)
    assert _part(tmp_path).stat().st_size == 70_000

    _fetch(tmp_path, url)  # the server answers the Range request with 200 and the whole file
    assert [r["range"] for r in state.requests] == [None, "bytes=70000-"]
    _assert_only_archive(tmp_path)


def test_complete_part_answered_416_is_used(server, tmp_path):
    # A run stopped after the last byte but before the checksum leaves a complete .part.
    url, state = server
    _part(tmp_path).write_bytes(ARCHIVE)
    _fetch(tmp_path, url)
    assert [r["range"] for r in state.requests] == [f"bytes={len(ARCHIVE)}-"]
    _assert_only_archive(tmp_path)


def test_corrupt_part_fails_checksum_then_next_attempt_starts_clean(server, tmp_path):
    url, state = server
    _part(tmp_path).write_bytes(b"\0" * 1000)  # not the archive's first 1000 bytes
    with pytest.raises(DownloadError, match="deleted"):
        _fetch(tmp_path, url)
    assert list(tmp_path.iterdir()) == []

    _fetch(tmp_path, url)
    assert [r["range"] for r in state.requests] == ["bytes=1000-", None]
    _assert_only_archive(tmp_path)


def test_keyboard_interrupt_keeps_part(server, tmp_path, monkeypatch):
    url, state = server
    original = urllib3.HTTPResponse.stream

    def one_chunk_then_ctrl_c(self, *args, **kwargs):
        yield next(iter(original(self, *args, **kwargs)))
        raise KeyboardInterrupt

    monkeypatch.setattr(urllib3.HTTPResponse, "stream", one_chunk_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _fetch(tmp_path, url)
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME + ".part"]
    kept = _part(tmp_path).stat().st_size
    assert 0 < kept < len(ARCHIVE)
    assert _part(tmp_path).read_bytes() == ARCHIVE[:kept]

    monkeypatch.setattr(urllib3.HTTPResponse, "stream", original)
    _fetch(tmp_path, url)
    assert state.requests[-1]["range"] == f"bytes={kept}-"
    _assert_only_archive(tmp_path)


def test_progress_bar(server, tmp_path, monkeypatch):
    url, state = server
    monkeypatch.setattr(download, "CHUNK_SIZE", 8192)  # many updates of the bar
    state.drop_after = [50_000]
    with pytest.raises(DownloadError):
        _fetch(tmp_path, url, progress=True)
    _fetch(tmp_path, url, progress=True)  # the resumed bar starts part-way
    _assert_only_archive(tmp_path)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/x.zip"
    with pytest.raises(DownloadError) as info:
        fetch_archive(tmp_path, url=url, filename="x.zip", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not download x.zip from {url} (connection refused)")
    assert str(tmp_path) in message
    assert "resume" not in message  # nothing was received, so nothing to resume
    assert list(tmp_path.iterdir()) == []


def test_http_error(server, tmp_path):
    url, _ = server
    missing = url.replace(NAME, "missing.zip")
    with pytest.raises(DownloadError, match=r"\(HTTP 404 Not Found\)"):
        fetch_archive(tmp_path, url=missing, known_hash=MD5, filename=NAME, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_default_message_points_to_zenodo(tmp_path, monkeypatch):
    # The default URL's failure sends the user to the record page, not to the raw file URL.
    def refuse(*args, **kwargs):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(download.requests, "get", refuse)
    with pytest.raises(DownloadError) as info:
        fetch_archive(tmp_path, progress=False)
    message = str(info.value)
    assert f"download it yourself from {download.RAVDESS_PAGE} and put it in {tmp_path}" in message
    assert download.RAVDESS_URL == "https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1"

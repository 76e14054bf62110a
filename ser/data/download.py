"""Fetch the official RAVDESS speech archive for users who do not have it yet.

The archive is 208 MB on Zenodo, a download long enough to be cut short by a flaky connection or a
Ctrl-C. Starting again from zero every time would make a slow link unusable, so the bytes received
so far are kept in ``<dest_dir>/<filename>.part`` and a later call asks only for the rest.

pooch does the checking and the final placement: it compares the checksum and renames the file into
place only when it matches, so a file at the final name has always been verified.
"""

from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pooch
import requests
import urllib3

from ..errors import UserError
from .ravdess import RAVDESS_ARCHIVE

__all__ = [
    "RAVDESS_ARCHIVE",
    "RAVDESS_MD5",
    "RAVDESS_PAGE",
    "RAVDESS_URL",
    "DownloadError",
    "fetch_archive",
]

RAVDESS_PAGE = "https://zenodo.org/records/1188976"
RAVDESS_URL = f"{RAVDESS_PAGE}/files/{RAVDESS_ARCHIVE}?download=1"
RAVDESS_MD5 = "bc696df654c87fed845eb13823edef8a"
# For callers that want to check free space or state the size before starting: the server says so too.
RAVDESS_SIZE = 208_468_073

# Without a network, connecting fails within this; the read timeout is longer, since a busy server
# may pause for a while between chunks without the transfer being lost.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
# Small enough that an interruption loses little and the progress bar moves; large enough that the
# Python overhead per chunk is negligible.
CHUNK_SIZE = 1 << 16

PART_SUFFIX = ".part"


class DownloadError(UserError, RuntimeError):
    """The archive could not be obtained; the message, one line, says what to do about it."""


def fetch_archive(
    dest_dir: str | Path,
    url: str = RAVDESS_URL,
    known_hash: str | None = "md5:" + RAVDESS_MD5,
    filename: str = RAVDESS_ARCHIVE,
    progress: bool = True,
) -> Path:
    """Return the path of a verified copy of the archive in ``dest_dir``, downloading it if needed.

    A file already at ``dest_dir/filename`` that matches ``known_hash`` is returned without touching
    the network, so this is cheap to call on every run. An interrupted download resumes where it
    stopped on the next call. ``known_hash`` takes pooch's ``"alg:hexdigest"`` form; None skips
    the check (the file is then trusted as received).

    Raises DownloadError when the network fails or the download does not match ``known_hash``.
    """
    dest_dir = Path(dest_dir).expanduser().resolve()
    dest_dir.mkdir(parents=True, exist_ok=True)
    downloader = _ResumingDownloader(
        part=dest_dir / (filename + PART_SUFFIX),
        dest_dir=dest_dir,
        filename=filename,
        page=RAVDESS_PAGE if url == RAVDESS_URL else url,
        progress=progress,
        hash_alg=_hash_alg(known_hash),
    )
    try:
        path = pooch.retrieve(url, known_hash=known_hash, fname=filename, path=dest_dir, downloader=downloader)
    except ValueError:
        # pooch signals a checksum mismatch with a ValueError after deleting the file; anything else
        # (a malformed known_hash, say) is a programming error and goes up unchanged.
        if downloader.digest is None or known_hash is None:
            raise
        expected = known_hash.split(":")[-1].lower()
        if downloader.digest.lower() == expected:
            raise
        raise DownloadError(
            f"checksum mismatch for {filename} downloaded from {url}: expected "
            f"{downloader.hash_alg.upper()} {expected}, got {downloader.digest}; the download was "
            "deleted, run again to download it afresh"
        ) from None
    return Path(path)


def _hash_alg(known_hash: str | None) -> str | None:
    if known_hash is None:
        return None
    # pooch's convention: no prefix means SHA256.
    if ":" not in known_hash:
        return "sha256"
    return known_hash.split(":", 1)[0].lower()


class _ResumingDownloader:
    """A pooch downloader that continues a partial download instead of starting it over.

    pooch's own HTTPDownloader did not serve: it streams into a fresh temporary file which pooch
    deletes on any error, and it never sends a Range header, so every interruption throws away all
    that was received. This one keeps the bytes in a ``.part`` file of its own, asks the server only
    for what is missing, and hands the file to pooch (by renaming it onto pooch's temporary file)
    only once it is complete. pooch then verifies it: on a mismatch pooch deletes it, so the next
    attempt starts clean rather than resuming a corrupt file.
    """

    def __init__(
        self,
        part: Path,
        dest_dir: Path,
        filename: str,
        page: str,
        progress: bool,
        hash_alg: str | None,
    ):
        self.part = part
        self.dest_dir = dest_dir
        self.filename = filename
        self.page = page
        self.progress = progress
        self.hash_alg = hash_alg
        # Set once a complete file has been handed to pooch, so that a checksum failure can name
        # the checksum actually received (pooch has deleted the file by the time we hear of it).
        self.digest: str | None = None

    def __call__(self, url: str, output_file, pooch_obj, check_only: bool = False):
        if check_only:  # Pooch.is_available asks only whether the URL answers.
            try:
                response = requests.head(url, allow_redirects=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
            except requests.RequestException:
                return False
            return response.ok
        try:
            self._download(url)
        except requests.RequestException as exc:
            raise self._network_error(url, _short_reason(exc, url)) from exc
        except _Incomplete as exc:
            raise self._network_error(url, str(exc)) from None
        # Same directory, so this is a rename: pooch's temporary file now holds the complete bytes,
        # and the .part is gone whatever pooch decides.
        os.replace(self.part, output_file)
        if self.hash_alg is not None:
            # pooch hashes the file again to verify it; reading it twice costs well under a second
            # for this archive, and spares us parsing pooch's error message for the checksum.
            try:
                self.digest = pooch.file_hash(str(output_file), alg=self.hash_alg)
            except ValueError:  # an algorithm pooch does not know: pooch itself will say so
                self.digest = None

    def _download(self, url: str) -> None:
        have = self.part.stat().st_size if self.part.exists() else 0
        # identity: byte offsets in a Range request count bytes of the file itself, which a
        # compressed transfer would not preserve.
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        response = requests.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        with response:
            if have and response.status_code == 416:
                # Nothing left to send from that offset: either the .part is already complete (a
                # previous run was stopped between the last byte and the checksum) or it is longer
                # than the file, which only a changed file explains.
                total = _content_range_total(response.headers.get("Content-Range", ""))
                if total == have:
                    return
                self.part.unlink()
                return self._download(url)
            response.raise_for_status()
            if have and response.status_code == 206:
                start, total = _content_range(response.headers.get("Content-Range", ""))
                if total is None and response.headers.get("Content-Length", "").isdigit():
                    total = have + int(response.headers["Content-Length"])
                if start != have:
                    # A server that sends some other range than the one asked for cannot be trusted
                    # to resume: start over without Range.
                    self.part.unlink()
                    return self._download(url)
                mode = "ab"
            else:
                # 200 to a Range request: the server ignores Range and sends the whole file, so
                # the bytes already here would be duplicated.
                have, mode = 0, "wb"
                length = response.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else None
            self._stream(response, mode, have, total)

    def _stream(self, response: requests.Response, mode: str, have: int, total: int | None) -> None:
        received = have
        of_total = f" of {_mb(total)}" if total is not None else ""
        with open(self.part, mode) as out, _progress_bar(self.progress, self.filename, have, total) as advance:
            # Written chunk by chunk and closed by the with-block even on KeyboardInterrupt, so the
            # .part holds every byte received when anything stops the transfer.
            # Read from urllib3 directly: requests' iter_content buffers up to a whole chunk and
            # discards it when the connection drops, so the .part would lag what was received. The
            # bytes are the file's own since we asked for no Content-Encoding.
            try:
                for chunk in response.raw.stream(CHUNK_SIZE, decode_content=False):
                    out.write(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            except (urllib3.exceptions.HTTPError, OSError):
                # A dropped connection, a stalled one, a reset: all resumable alike.
                raise _Incomplete(f"connection lost after {_mb(received)}{of_total}") from None
        if total is not None and received != total:
            # A connection closed early without an error from the transport is caught here, so a
            # truncated file is resumed rather than handed to the checksum.
            raise _Incomplete(f"connection closed after {_mb(received)}{of_total}")

    def _network_error(self, url: str, reason: str) -> DownloadError:
        kept = self.part.stat().st_size if self.part.exists() else 0
        resume = f"run again to resume ({_mb(kept)} kept in {self.part.name}), or " if kept else ""
        return DownloadError(
            f"could not download {self.filename} from {url} ({reason}); {resume}"
            f"download it yourself from {self.page} and put it in {self.dest_dir}"
        )


class _Incomplete(Exception):
    pass


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _content_range(value: str) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else None)


def _content_range_total(value: str) -> int | None:
    # The form a 416 carries: "bytes */<size>".
    match = re.match(r"bytes\s+\*/(\d+)", value.strip())
    return int(match.group(1)) if match else None


def _short_reason(exc: requests.RequestException, url: str) -> str:
    """Boil requests' nested exception text down to the few words a user can act on."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}".strip()
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, requests.ReadTimeout):
        return f"server sent nothing for {READ_TIMEOUT_S:g} s"
    root = _root_os_error(exc)
    if root is not None:
        if isinstance(root, socket.gaierror):
            return f"cannot resolve host {urlsplit(url).hostname}"
        if root.strerror:
            return root.strerror[0].lower() + root.strerror[1:]
    return type(exc).__name__


def _root_os_error(exc: BaseException) -> OSError | None:
    # requests wraps urllib3's errors, which wrap the socket's; the socket's error is the one that
    # says what happened (refused, unreachable, unresolvable).
    found, stack, seen = None, [exc], set()
    while stack and len(seen) < 32:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno is not None and item.strerror:
            found = item
        stack += [item.__cause__, item.__context__, getattr(item, "reason", None)]
        stack += [a for a in getattr(item, "args", ()) if isinstance(a, BaseException)]
    return found


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextmanager
def _progress_bar(enabled: bool, filename: str, have: int, total: int | None):
    """Yield a callback taking the size of each chunk: a rich bar (bytes, speed, time left), or a no-op."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    # stderr, so that a caller piping stdout gets only what it asked for.
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:
        verb = "resuming" if have else "downloading"
        task = progress.add_task(f"{verb} {filename}", total=total, completed=have)
        yield lambda n: progress.advance(task, n)

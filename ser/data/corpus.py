"""Where the corpus's files come from: an extracted tree, the official zip archive, or a download.

``data.root`` may be
- a directory holding ``Actor_01/ ... Actor_24/`` at any depth (e.g. under ``Audio_Speech_Actors_01-24/``);
- the official archive ``Audio_Speech_Actors_01-24.zip`` itself, read in place without extracting;
- a directory holding that archive, or none: then it is downloaded there (see :mod:`ser.data.download`).

Every file is named by a *key*: ``Actor_XX/<name>`` when it sits in an actor folder (so the extracted
tree and the archive give the same keys), otherwise its path relative to the root.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import UserError
from .audio import AUDIO_SUFFIXES
from .ravdess import RAVDESS_ARCHIVE

_ACTOR_DIR = re.compile(r"^Actor_\d\d$")


class CorpusError(UserError, RuntimeError):
    """The corpus cannot be found or used; the message says what to do."""


@dataclass(frozen=True)
class SourceFile:
    key: str  # Actor_XX/<name>, or the path relative to the root
    location: str  # path on disk, or member name inside the archive
    size: int
    stamp: int  # mtime in ns for files; CRC-32 for archive members


def _is_candidate(parts: tuple[str, ...]) -> bool:
    """A file is part of the corpus when it is audio, or sits in an actor folder (so misnamed files are seen)."""
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    in_actor_dir = len(parts) >= 2 and _ACTOR_DIR.match(parts[-2]) is not None
    return in_actor_dir or parts[-1].lower().endswith(AUDIO_SUFFIXES)


def _key(parts: tuple[str, ...]) -> str:
    if len(parts) >= 2 and _ACTOR_DIR.match(parts[-2]):
        return "/".join(parts[-2:])
    return "/".join(parts)


class DirectorySource:
    """An extracted corpus tree."""

    def __init__(self, root: Path):
        self.root = root
        self.description = f"directory {root}"

    def files(self) -> list[SourceFile]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
            for name in sorted(filenames):
                path = Path(dirpath, name)
                parts = path.relative_to(self.root).parts
                if _is_candidate(parts):
                    stat = path.stat()
                    found.append(SourceFile(_key(parts), str(path), stat.st_size, stat.st_mtime_ns))
        return found

    def fingerprint(self) -> list:
        return [(f.key, f.location, f.size, f.stamp) for f in self.files()]

    def read(self, file: SourceFile) -> bytes:
        return Path(file.location).read_bytes()


class ArchiveSource:
    """The official zip archive, read member by member without extracting it."""

    def __init__(self, archive: Path):
        self.archive = archive
        self.description = f"archive {archive}"
        self._zip: zipfile.ZipFile | None = None  # opened lazily, once per worker process

    def __getstate__(self):
        return {"archive": self.archive, "description": self.description, "_zip": None}

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.archive)
            except zipfile.BadZipFile:
                raise CorpusError(
                    f"{self.archive} is not a valid zip archive; delete it and download it again"
                ) from None
        return self._zip

    def files(self) -> list[SourceFile]:
        found = []
        for info in self._open().infolist():
            parts = PurePosixPath(info.filename).parts
            if not info.is_dir() and parts and _is_candidate(parts):
                found.append(SourceFile(_key(parts), info.filename, info.file_size, info.CRC))
        return sorted(found, key=lambda f: f.location)

    def fingerprint(self) -> list:
        stat = self.archive.stat()
        return [str(self.archive.resolve()), stat.st_size, stat.st_mtime_ns]

    def read(self, file: SourceFile) -> bytes:
        try:
            return self._open().read(file.location)
        except (zipfile.BadZipFile, OSError) as error:  # a damaged member is one bad file, not a dead corpus
            raise OSError(f"cannot be read from the archive ({error})") from None


def _has_actor_dirs(root: Path) -> bool:
    return any(_ACTOR_DIR.match(name) for _, dirnames, _ in os.walk(root) for name in dirnames)


def _has_audio_files(root: Path) -> bool:
    return any(p.suffix.lower() in AUDIO_SUFFIXES for p in root.rglob("*"))


def holds_corpus(root: str | Path) -> bool:
    """Whether ``root`` holds a corpus of its own: an archive, actor folders or audio files, used as they are."""
    root = Path(root).expanduser()
    if root.is_file():
        return True
    return root.is_dir() and ((root / RAVDESS_ARCHIVE).is_file() or _has_actor_dirs(root) or _has_audio_files(root))


def open_source(root: str | Path, download: bool = True, progress: bool = True) -> DirectorySource | ArchiveSource:
    """Find the corpus at ``root``, downloading the official archive into it when it holds none."""
    root = Path(root).expanduser()
    if root.is_file():
        if zipfile.is_zipfile(root):
            return ArchiveSource(root)
        raise CorpusError(
            f"data.root={root} is a file but not a zip archive; point it at the corpus directory or archive"
        )
    if root.is_dir() and _has_actor_dirs(root):
        return DirectorySource(root)
    archive = root / RAVDESS_ARCHIVE
    if archive.is_file():
        return ArchiveSource(archive)
    if root.is_dir() and _has_audio_files(root):
        return DirectorySource(root)  # a flat folder of clips still works
    if not download:
        raise CorpusError(
            f"no RAVDESS corpus at {root}: put the Actor_01..Actor_24 folders or {RAVDESS_ARCHIVE} there, "
            "or set data.download=true"
        )
    from .download import fetch_archive

    return ArchiveSource(fetch_archive(root, filename=RAVDESS_ARCHIVE, progress=progress))

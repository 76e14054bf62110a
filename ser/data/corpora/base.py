"""What every corpus provides: its clips, its labels, its standard protocols and where it comes from.

A corpus plug-in lists the clips of a corpus *as distributed* (a directory, or the archive it ships
as) and says, for each one, where its audio is, its label in the corpus's own words, its speaker and
its metadata. Listing never drops a file silently: what cannot be a clip comes back as a
:class:`Problem` with its reason. :meth:`Corpus.listing` then applies the label map and the chosen
labels, counting the clips whose label is not kept.

Audio is read as bytes (:meth:`Corpus.read`) and decoded by :func:`ser.data.audio.decode`, so every
corpus gets the same checks for empty, undecodable and truncated files; :func:`clip_audio` also cuts a
clip out of a longer file when it has a start and an end.
"""

from __future__ import annotations

import os
import zipfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ...errors import UserError
from .. import audio
from ..corpus import AUDIO_SUFFIXES, ArchiveSource, CorpusError, DirectorySource, SourceFile

UNKNOWN_SPEAKER = "unknown"  # the speaker of a clip whose corpus does not say


class CorpusSetupError(CorpusError, UserError):
    """A corpus that cannot be found, opened or configured; the one-line message says what to do."""


@dataclass(frozen=True)
class Clip:
    """One clip of a corpus, before the label map.

    ``key`` is unique within the corpus and stable across copies of it (the path relative to the
    corpus root for files), so it can name the clip in caches, manifests and predictions.
    """

    key: str
    location: str  # path on disk, member name in the archive, or row index of a datasets table
    label: str  # the corpus's own label (e.g. ``ps``, ``exc``, ``W``), before the label map
    speaker: str
    start: float | None = None  # seconds into the file where the clip starts; None = its beginning
    end: float | None = None  # seconds into the file where the clip ends; None = its end
    stage: str | None = None  # a stage that the corpus itself assigns (a manifest's split column)
    meta: Mapping[str, Any] = field(default_factory=dict)  # gender, intensity, sentence, session, ...


@dataclass(frozen=True)
class Problem:
    """A file or entry that is not a usable clip, and why."""

    key: str
    location: str
    reason: str

    def as_dict(self) -> dict:
        return {"key": self.key, "location": self.location, "reason": self.reason}


@dataclass(frozen=True)
class Protocol:
    """A corpus's standard speaker-independent protocol: the groups each fold tests on.

    ``group`` is the clip field that folds hold out: ``speaker``, or a metadata field such as ``session``.
    """

    name: str
    description: str
    group: str
    folds: Mapping[int, tuple[str, ...]]

    def group_of(self, clip: Clip) -> str:
        return clip.speaker if self.group == "speaker" else str(clip.meta[self.group])

    def test_groups(self, fold: int) -> tuple[str, ...]:
        if fold not in self.folds:
            raise CorpusSetupError(
                f"data.fold={fold} is out of range; {self.name} has folds {min(self.folds)} to {max(self.folds)}"
            )
        return self.folds[fold]


@dataclass(frozen=True)
class Origin:
    """Where a corpus comes from: a free download with its checksum, or a message saying how to get it."""

    url: str | None = None
    known_hash: str | None = None  # pooch's convention: "md5:<hex>", "sha256:<hex>"
    archive: str | None = None  # the file name of the download
    message: str = ""  # one line: where to get it and where to put it


@dataclass
class Listing:
    """The clips of a corpus after the label map, with everything that was not kept and why."""

    clips: list[Clip]  # labels here are the mapped ones, all in ``labels``
    labels: tuple[str, ...]  # the classes, in label-index order
    problems: list[Problem] = field(default_factory=list)  # named and skipped; data.strict=true refuses them
    not_kept: Counter = field(default_factory=Counter)  # mapped label -> clips dropped because it is not kept
    notes: list[str] = field(default_factory=list)  # facts for the summary that are not errors

    def label_index(self, clip: Clip) -> int:
        return self.labels.index(clip.label)

    def record(self, clip: Clip) -> dict:
        """What a prepared cache keeps of ``clip`` (JSON-safe): the fields that splits, metrics and manifests read.

        ``label`` is the class index, ``emotion`` its name; the clip's metadata (RAVDESS's ``actor``,
        ``intensity``, ``statement``, ``repetition``; ``session``; ...) follows.
        """
        return {
            "key": clip.key,
            "label": self.label_index(clip),
            "emotion": clip.label,
            "speaker": clip.speaker,
            "gender": clip.meta.get("gender", "unknown"),
            "stage": clip.stage,
            "start": clip.start,
            "end": clip.end,
            **{name: value for name, value in clip.meta.items() if name != "gender"},
        }

    def summary(self) -> dict:
        return {
            "clips": len(self.clips),
            "labels": {label: sum(c.label == label for c in self.clips) for label in self.labels},
            "speakers": dict(sorted(Counter(c.speaker for c in self.clips).items())),
            "problems": [p.as_dict() for p in self.problems],
            "not_kept": dict(sorted(self.not_kept.items())),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# The files of a corpus as distributed


class CorpusTree:
    """Every file of a corpus as distributed, from a directory or a zip archive read in place.

    :class:`ser.data.corpus.DirectorySource` and ``ArchiveSource`` list only RAVDESS's candidates;
    other corpora need their side files (``VideoDemographics.csv``, ``EmoEvaluation/*.txt``) too, so
    this lists every file and reads through those sources.
    """

    def __init__(self, root: str | Path, corpus: str, hint: str = ""):
        self.root = Path(root).expanduser()
        if self.root.is_file():
            if not zipfile.is_zipfile(self.root):
                raise CorpusSetupError(
                    f"data.root={self.root} is a file but not a zip archive; point it at the {corpus} folder or archive"
                )
            self._source: DirectorySource | ArchiveSource = ArchiveSource(self.root)
        elif self.root.is_dir():
            self._source = DirectorySource(self.root)
        else:
            raise CorpusSetupError(f"no {corpus} corpus at {self.root}; {hint or 'point data.root at it'}")
        self.description = self._source.description
        self._files: list[SourceFile] | None = None

    @property
    def is_archive(self) -> bool:
        return isinstance(self._source, ArchiveSource)

    def files(self) -> list[SourceFile]:
        """Every regular file, hidden ones and macOS's ``__MACOSX`` left out; keys are relative POSIX paths."""
        if self._files is None:
            self._files = sorted(self._list(), key=lambda f: f.key)
        return self._files

    def _list(self) -> Iterable[SourceFile]:
        if isinstance(self._source, ArchiveSource):
            for info in self._source._open().infolist():
                parts = PurePosixPath(info.filename).parts
                if not info.is_dir() and parts and not _hidden(parts):
                    yield SourceFile("/".join(parts), info.filename, info.file_size, info.CRC)
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not _hidden((d,)))
            for name in sorted(filenames):
                path = Path(dirpath, name)
                parts = path.relative_to(self.root).parts
                if not _hidden(parts):
                    stat = path.stat()
                    yield SourceFile("/".join(parts), str(path), stat.st_size, stat.st_mtime_ns)

    def audio_files(self) -> list[SourceFile]:
        return [f for f in self.files() if is_audio_name(f.key)]

    def find(self, name: str) -> list[SourceFile]:
        """Files whose relative path ends with ``name`` (``VideoDemographics.csv``), case-insensitively."""
        name = name.lower()
        return [f for f in self.files() if f.key.lower() == name or f.key.lower().endswith("/" + name)]

    def read(self, location: str) -> bytes:
        return self._source.read(SourceFile(location, location, 0, 0))

    def read_text(self, file: SourceFile) -> str:
        return self.read(file.location).decode("utf-8", errors="replace")

    def fingerprint(self) -> list:
        """What changes when any file changes: names, sizes and stamps (mtimes, or CRCs in an archive)."""
        return [(f.key, f.size, f.stamp) for f in self.files()]


def _hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def is_audio_name(name: str) -> bool:
    return name.lower().endswith(AUDIO_SUFFIXES)


def stem_of(key: str) -> str:
    """The file name of ``key`` without its folders and extension."""
    return key.rsplit("/", 1)[-1].rsplit(".", 1)[0]


# ---------------------------------------------------------------------------------------------
# A corpus


class Corpus(ABC):
    """A corpus plug-in. Subclasses set the class attributes and implement :meth:`scan`.

    Attributes:
        name: the registry name (``data=<name>``).
        title: the corpus's usual name, for messages.
        label_names: the corpus's own labels, or None for an open set (manifests, folders, datasets),
            where a label outside ``data.labels`` is a problem rather than a class left out.
        label_map: the corpus's labels renamed to the project's shared names (RAVDESS's: ``angry``,
            ``calm``, ``disgust``, ``fearful``, ``happy``, ``neutral``, ``sad``, ``surprised``, plus
            ``bored``), merging where the field does (IEMOCAP's ``exc`` into ``happy``).
        default_labels: the classes kept, in label-index order, when ``data.labels`` is not set.
        protocol: the standard speaker-independent protocol, or None.
        origin: where the corpus comes from.
    """

    name: str = ""
    title: str = ""
    label_names: tuple[str, ...] | None = None
    label_map: Mapping[str, str] = {}
    default_labels: tuple[str, ...] = ()
    protocol: Protocol | None = None
    origin: Origin = Origin()

    def __init__(self, root: str | Path, **settings: Any):
        if settings:
            unknown = ", ".join(sorted(settings))
            raise CorpusSetupError(f"data={self.name} has no setting(s) {unknown}; remove them")
        self.root = Path(root).expanduser()
        self._tree: CorpusTree | None = None

    @property
    def tree(self) -> CorpusTree:
        if self._tree is None:
            self._tree = CorpusTree(self.root, self.title, self.origin.message)
        return self._tree

    @property
    def description(self) -> str:
        """Where the corpus is read from, for summaries: ``directory <path>`` or ``archive <path>``."""
        return self.tree.description

    @abstractmethod
    def scan(self) -> tuple[list[Clip], list[Problem]]:
        """Every clip the corpus holds, with its own label, and every file or entry that is not one."""

    def notes(self, clips: Sequence[Clip]) -> list[str]:
        """Facts about the listing worth a line in the summary that are not errors."""
        return []

    def read(self, clip: Clip) -> bytes:
        """The bytes of the file that holds ``clip``.

        Raises:
            OSError: the file cannot be read.
        """
        return self.tree.read(clip.location)

    def fingerprint(self) -> list:
        """Part of the cache key: the corpus name, its settings and every file's name, size and stamp."""
        return [self.name, str(self.root.resolve()), self.tree.fingerprint()]

    def protocol_for(self, speakers: Iterable[str]) -> Protocol | None:
        """The standard protocol; a corpus without one gets leave-one-speaker-out over ``speakers`` (those
        of its clips: ``{clip.speaker for clip in listing.clips}``, or a prepared cache's ``speaker`` fields)."""
        if self.protocol is not None:
            return self.protocol
        speakers = sorted(set(speakers) - {UNKNOWN_SPEAKER})
        if len(speakers) < 2:
            return None
        return Protocol(
            name=f"{self.title} leave-one-speaker-out",
            description=f"{len(speakers)} folds, each testing on one speaker",
            group="speaker",
            folds={k: (speaker,) for k, speaker in enumerate(speakers, start=1)},
        )

    def fold_stages(self, fold: int) -> Mapping[str, str] | None:
        """Clip key -> ``train`` or ``test`` when the corpus ships its own fold files, else None."""
        return None

    def listing(
        self,
        labels: Sequence[str] | None = None,
        label_map: Mapping[str, str | None] | None = None,
    ) -> Listing:
        """The clips after the label map, keeping ``labels`` (default :attr:`default_labels`) in that order.

        ``label_map`` entries are applied on top of the corpus's own map; a label mapped to None or ``""``
        is dropped and counted like any label not kept.
        """
        clips, problems = self.scan()
        mapping: dict[str, str | None] = {**self.label_map, **(label_map or {})}
        mapped: list[tuple[Clip, str | None]] = []
        known = None if self.label_names is None else set(self.label_names) | set(label_map or {})
        for clip in clips:
            if not clip.label:
                problems.append(Problem(clip.key, clip.location, "no label"))
                continue
            if known is not None and clip.label not in known:
                problems.append(
                    Problem(
                        clip.key,
                        clip.location,
                        f"label {clip.label!r} is not one of {self.title}'s ({', '.join(sorted(known))})",
                    )
                )
                continue
            mapped.append((clip, mapping.get(clip.label, clip.label) or None))
        chosen = tuple(labels) if labels else self._default_labels(label for _, label in mapped)
        if len(set(chosen)) != len(chosen):
            raise CorpusSetupError(f"data.labels={list(chosen)} names a label twice; list each class once")
        kept, not_kept = [], Counter()
        for clip, label in mapped:
            if label in chosen:
                kept.append(_relabel(clip, label))
            elif self.label_names is None and label is not None:
                # An open set has no labels of its own to leave out: a label outside data.labels is bad input.
                problems.append(
                    Problem(clip.key, clip.location, f"label {label!r} is outside data.labels ({', '.join(chosen)})")
                )
            else:
                not_kept[label if label is not None else clip.label] += 1
        return Listing(kept, chosen, problems, not_kept, self.notes(kept))

    def _default_labels(self, seen: Iterable[str | None]) -> tuple[str, ...]:
        if self.default_labels:
            return tuple(self.default_labels)
        return tuple(sorted({label for label in seen if label}))


def _relabel(clip: Clip, label: str) -> Clip:
    if label == clip.label:
        return clip
    return Clip(
        clip.key,
        clip.location,
        label,
        clip.speaker,
        clip.start,
        clip.end,
        clip.stage,
        {**clip.meta, "original_label": clip.label},
    )


def drop_duplicate_keys(clips: list[Clip], problems: list[Problem]) -> list[Clip]:
    """Keep the first clip of each key; every later one becomes a ``duplicate key`` problem."""
    first: dict[str, str] = {}
    unique = []
    for clip in clips:
        if clip.key in first:
            problems.append(
                Problem(clip.key, clip.location, f"duplicate key {clip.key!r} (first at {first[clip.key]})")
            )
            continue
        first[clip.key] = clip.location
        unique.append(clip)
    return unique


def clip_audio(corpus: Corpus, clip: Clip) -> tuple[np.ndarray, int]:
    """Read and decode ``clip``, cut to its start and end: ``(audio (T, C) float32, sample_rate)``.

    Raises:
        ser.data.audio.AudioError: the file is empty, undecodable or truncated, or the clip's start and
            end do not lie inside it.
        OSError: the file cannot be read.
    """
    return cut_clip(*audio.decode(corpus.read(clip)), clip)


def cut_clip(samples: np.ndarray, rate: int, clip: Clip) -> tuple[np.ndarray, int]:
    """The part of decoded ``(T, C)`` audio between ``clip.start`` and ``clip.end``: ``(audio (T', C), rate)``.

    Raises:
        ser.data.audio.AudioError: start and end make no clip, or lie past the end of the file.
    """
    if clip.start is None and clip.end is None:
        return samples, rate
    duration = len(samples) / rate
    start = clip.start or 0.0
    end = duration if clip.end is None else clip.end
    # A frame's rounding is not an error: a manifest's end_time is often num_frame / rate written as a float.
    tolerance = 1.0 / rate
    if start < 0 or end <= start:
        raise audio.AudioError(f"start {start:.3f} s and end {end:.3f} s do not make a clip")
    if start >= duration or end > duration + tolerance:
        raise audio.AudioError(f"start/end {start:.3f}-{end:.3f} s lies past the end of the file ({duration:.3f} s)")
    return samples[int(round(start * rate)) : int(round(min(end, duration) * rate))], rate

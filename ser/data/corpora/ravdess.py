"""RAVDESS as a plug-in: :mod:`ser.data.ravdess`'s names and :mod:`ser.data.corpus`'s files, same keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import first_line
from ..corpus import ArchiveSource, CorpusError, DirectorySource, SourceFile, open_source
from ..download import RAVDESS_ARCHIVE, RAVDESS_MD5, RAVDESS_PAGE, RAVDESS_URL, DownloadError
from ..ravdess import EMOBOX_FOLDS, EMOTIONS, SPEECH_CHANNEL, SPEECH_MODALITY, STATEMENTS, parse_name
from .base import Clip, Corpus, CorpusSetupError, Origin, Problem, Protocol


class Ravdess(Corpus):
    """RAVDESS speech: ``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav``, 24 actors, 8 emotions, 1440 clips.

    Settings: ``modality`` and ``vocal_channel`` (default audio-only speech, 03 and 01) choose the part
    of the corpus; well-named clips outside it are counted in the notes, not reported as problems.
    ``download`` fetches the official archive into ``root`` when it holds no corpus.
    """

    name = "ravdess"
    title = "RAVDESS"
    label_names = EMOTIONS
    label_map = {}
    default_labels = EMOTIONS  # the published model's order
    protocol = Protocol(
        name="EmoBox RAVDESS folds",
        description="EmoBox's six speaker-independent folds, four test actors each",
        group="speaker",
        folds={fold: tuple(f"{actor:02d}" for actor in actors) for fold, actors in EMOBOX_FOLDS.items()},
    )
    origin = Origin(
        url=RAVDESS_URL,
        known_hash="md5:" + RAVDESS_MD5,
        archive=RAVDESS_ARCHIVE,
        message=f"download {RAVDESS_ARCHIVE} from {RAVDESS_PAGE} and point data.root at it, or set data.download=true",
    )

    def __init__(
        self,
        root: str | Path,
        modality: int = SPEECH_MODALITY,
        vocal_channel: int = SPEECH_CHANNEL,
        download: bool = False,
        progress: bool = True,
        **settings: Any,
    ):
        super().__init__(root, **settings)
        self.modality, self.vocal_channel = int(modality), int(vocal_channel)
        self.download, self.progress = download, progress
        self._source: DirectorySource | ArchiveSource | None = None
        self._excluded = 0

    @property
    def source(self) -> DirectorySource | ArchiveSource:
        if self._source is None:
            try:
                self._source = open_source(self.root, download=self.download, progress=self.progress)
            except (CorpusError, DownloadError) as error:  # neither is a UserError today; their first line is
                raise CorpusSetupError(first_line(error)) from None
        return self._source

    @property
    def description(self) -> str:
        return self.source.description

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        clips, problems, seen = [], [], {}
        self._excluded = 0
        for file in self.source.files():
            try:
                name = parse_name(file.key)
            except ValueError as error:
                problems.append(Problem(file.key, file.location, f"name outside the RAVDESS scheme: {error}"))
                continue
            folder = file.key.split("/")[0]
            if folder.startswith("Actor_") and int(folder[6:]) != name.actor:
                reason = f"actor {name.actor:02d} in the name but the file is in {folder}"
                problems.append(Problem(file.key, file.location, reason))
                continue
            if (name.modality, name.vocal_channel) != (self.modality, self.vocal_channel):
                self._excluded += 1
                continue
            if name.stem in seen:
                problems.append(Problem(file.key, file.location, f"duplicate of {seen[name.stem]}"))
                continue
            seen[name.stem] = file.location
            meta = {
                "actor": name.actor,
                "gender": name.gender,
                "intensity": name.intensity,
                "statement": name.statement,
                "sentence": STATEMENTS[name.statement],
                "repetition": name.repetition,
            }
            clips.append(Clip(file.key, file.location, name.emotion, f"{name.actor:02d}", meta=meta))
        return clips, problems

    @property
    def excluded(self) -> int:
        """Well-named clips outside the chosen modality and vocal channel, at the last :meth:`scan`."""
        return self._excluded

    def notes(self, clips) -> list[str]:
        if not self._excluded:
            return []
        return [
            f"{self._excluded} well-named clips outside modality {self.modality:02d} / "
            f"vocal channel {self.vocal_channel:02d} left out"
        ]

    def read(self, clip: Clip) -> bytes:
        return self.source.read(SourceFile(clip.key, clip.location, 0, 0))

    def fingerprint(self) -> list:
        return self.source.fingerprint()

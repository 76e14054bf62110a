"""Your own data as one folder per label, as Hugging Face's ``audiofolder`` lays it out.

``root/<label>/<clip>.wav``, or with split folders ``root/{train,validation,test}/<label>/<clip>.wav``
(any depth below the label folder is allowed). The label is the folder that holds the clip directly;
a split folder (``train``, ``validation``/``val``/``dev``, ``test``) above it fixes the clip's stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import UNKNOWN_SPEAKER, Clip, Corpus, Origin, Problem, drop_duplicate_keys

_SPLIT_DIRS = {"train": "train", "validation": "val", "val": "val", "valid": "val", "dev": "val", "test": "test"}


class Folders(Corpus):
    """One folder per label; ``speaker_from`` optionally takes the speaker from the file name."""

    name = "folders"
    title = "folders"
    origin = Origin(message="point data.root at a folder holding one subfolder of audio files per label")

    def __init__(self, root: str | Path, speaker_separator: str | None = None, **settings: Any):
        """``speaker_separator``: when set, a file name's text before its first separator is the speaker
        (``spk1_0001.wav`` with ``_``); otherwise speakers are unknown and speaker splits unavailable."""
        super().__init__(root, **settings)
        self.speaker_separator = speaker_separator or None

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        clips, problems = [], []
        for file in self.tree.audio_files():
            parts = file.key.split("/")
            stage = _SPLIT_DIRS.get(parts[0].lower()) if len(parts) >= 3 else None
            if len(parts) < 2 or (stage is not None and len(parts) < 3):
                problems.append(Problem(file.key, file.location, "not in a label folder"))
                continue
            label = parts[-2]
            speaker = UNKNOWN_SPEAKER
            if self.speaker_separator:
                head, sep, _ = parts[-1].partition(self.speaker_separator)
                if not sep:
                    problems.append(
                        Problem(file.key, file.location, f"no {self.speaker_separator!r} in the name to end a speaker")
                    )
                    continue
                speaker = head
            clips.append(Clip(file.key, file.location, label, speaker, stage=stage))
        return drop_duplicate_keys(clips, problems), problems

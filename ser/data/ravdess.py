"""The RAVDESS corpus: its file-name scheme, its labels and where its files come from.

A RAVDESS name has seven two-digit fields, ``MM-VV-EE-II-SS-RR-AA.wav``:
modality, vocal channel, emotion, intensity, statement, repetition and actor.
The speech part of the corpus (modality 03 "audio-only", vocal channel 01 "speech")
holds 1440 clips: 24 actors x (7 emotions x 2 intensities + neutral) x 2 statements x 2 repetitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The label order of the published model (ehcalabres/wav2vec2-lg-xlsr-en-speech-emotion-recognition):
# alphabetical, so index i of a logit vector means EMOTIONS[i] everywhere in this project.
EMOTIONS: tuple[str, ...] = ("angry", "calm", "disgust", "fearful", "happy", "neutral", "sad", "surprised")

# RAVDESS's own emotion codes (field 3 of a name), which are not in label order.
EMOTION_CODES: dict[int, str] = {
    1: "neutral",
    2: "calm",
    3: "happy",
    4: "sad",
    5: "angry",
    6: "fearful",
    7: "disgust",
    8: "surprised",
}
EMOTION_TO_CODE: dict[str, int] = {name: code for code, name in EMOTION_CODES.items()}

STATEMENTS: dict[int, str] = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
NUM_ACTORS = 24
RAVDESS_ARCHIVE = "Audio_Speech_Actors_01-24.zip"  # the official speech archive on Zenodo
SPEECH_MODALITY = 3  # audio-only
SPEECH_CHANNEL = 1  # speech (2 is song)

# EmoBox's speaker-independent protocol for RAVDESS: the four test actors of each of its six folds.
EMOBOX_FOLDS: dict[int, tuple[int, ...]] = {
    1: (1, 11, 20, 21),
    2: (4, 10, 12, 14),
    3: (8, 9, 19, 23),
    4: (3, 5, 7, 24),
    5: (2, 15, 16, 18),
    6: (6, 13, 17, 22),
}

_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


@dataclass(frozen=True)
class ClipName:
    """The seven fields of a RAVDESS file name."""

    modality: int
    vocal_channel: int
    emotion: str
    intensity: int  # 1 normal, 2 strong
    statement: int
    repetition: int
    actor: int

    @property
    def label(self) -> int:
        """Index of the emotion in :data:`EMOTIONS`."""
        return EMOTIONS.index(self.emotion)

    @property
    def gender(self) -> str:
        """Odd-numbered actors are male, even-numbered female."""
        return "male" if self.actor % 2 else "female"

    @property
    def stem(self) -> str:
        fields = (
            self.modality,
            self.vocal_channel,
            EMOTION_TO_CODE[self.emotion],
            self.intensity,
            self.statement,
            self.repetition,
            self.actor,
        )
        return "-".join(f"{field:02d}" for field in fields)


def parse_name(filename: str) -> ClipName:
    """Parse ``MM-VV-EE-II-SS-RR-AA.ext`` (any directory part is ignored).

    Raises:
        ValueError: with the reason, when the name is outside the scheme.
    """
    stem = filename.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    match = _NAME.match(stem)
    if match is None:
        raise ValueError("name is not of the form MM-VV-EE-II-SS-RR-AA (seven two-digit fields)")
    modality, channel, emotion, intensity, statement, repetition, actor = map(int, match.groups())
    problems = []
    if modality not in (1, 2, 3):
        problems.append(f"modality {modality:02d} is not 01-03")
    if channel not in (1, 2):
        problems.append(f"vocal channel {channel:02d} is not 01-02")
    if emotion not in EMOTION_CODES:
        problems.append(f"emotion {emotion:02d} is not 01-08")
    if intensity not in (1, 2):
        problems.append(f"intensity {intensity:02d} is not 01-02")
    elif intensity == 2 and emotion == EMOTION_TO_CODE["neutral"]:
        problems.append("neutral has no strong intensity")
    if statement not in STATEMENTS:
        problems.append(f"statement {statement:02d} is not 01-02")
    if repetition not in (1, 2):
        problems.append(f"repetition {repetition:02d} is not 01-02")
    if not 1 <= actor <= NUM_ACTORS:
        problems.append(f"actor {actor:02d} is not 01-{NUM_ACTORS}")
    if problems:
        raise ValueError("; ".join(problems))
    return ClipName(modality, channel, EMOTION_CODES[emotion], intensity, statement, repetition, actor)

"""TESS: two speakers, ``<SPEAKER>_<emotion>/<SPEAKER>_<word>_<emotion>.wav``, 2800 clips at 24414 Hz.

The folder names' capitalisation is the release's own (``OAF_Fear``, ``OAF_Pleasant_surprise``,
``YAF_pleasant_surprised``, the rest lower case); the label comes from the file name, and a folder
that names another speaker or emotion than its file is a problem.
"""

from __future__ import annotations

import re

from .base import Clip, Corpus, Origin, Problem, Protocol, drop_duplicate_keys, stem_of

SPEAKERS: dict[str, str] = {"OAF": "older adult female", "YAF": "younger adult female"}
EMOTIONS: dict[str, str] = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fearful",
    "happy": "happy",
    "neutral": "neutral",
    "ps": "surprised",  # pleasant surprise
    "sad": "sad",
}
# The release's folder for each speaker and file-name emotion, with its capitalisation.
FOLDERS: dict[tuple[str, str], str] = {
    **{(s, e): f"{s}_{e}" for s in SPEAKERS for e in EMOTIONS if e != "ps"},
    ("OAF", "fear"): "OAF_Fear",
    ("OAF", "sad"): "OAF_Sad",
    ("OAF", "ps"): "OAF_Pleasant_surprise",
    ("YAF", "ps"): "YAF_pleasant_surprised",
}
SAMPLE_RATE = 24_414

_NAME = re.compile(r"^(OAF|YAF)_(.+)_([a-z]+)$", re.IGNORECASE)


def _folder_emotion(folder: str) -> str | None:
    """The emotion a folder such as ``OAF_Pleasant_surprise`` names, in file-name terms."""
    rest = folder.split("_", 1)[1].lower() if "_" in folder else ""
    if rest.startswith("pleasant"):
        return "ps"
    return rest if rest in EMOTIONS else None


class Tess(Corpus):
    """TESS: speakers OAF and YAF, 200 words in "Say the word ...", 7 emotions including ``ps``."""

    name = "tess"
    title = "TESS"
    label_names = tuple(EMOTIONS)
    label_map = EMOTIONS
    default_labels = ("angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised")
    protocol = Protocol(
        name="TESS leave-one-speaker-out",
        description="two folds, each testing on one speaker (EmoBox's single fold is a random clip split)",
        group="speaker",
        folds={1: ("OAF",), 2: ("YAF",)},
    )
    origin = Origin(
        message=(
            "download TESS from https://doi.org/10.5683/SP2/E8H2MF (University of Toronto Dataverse) "
            "and point data.root at the folder holding OAF_*/ and YAF_*/"
        )
    )

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        clips, problems = [], []
        for file in self.tree.audio_files():
            stem = stem_of(file.key)
            match = _NAME.match(stem)
            if match is None or match.group(3).lower() not in EMOTIONS:
                reason = "name is not <OAF|YAF>_<word>_<emotion> with emotion " + "/".join(EMOTIONS)
                problems.append(Problem(file.key, file.location, reason))
                continue
            speaker, word, emotion = match.group(1).upper(), match.group(2).lower(), match.group(3).lower()
            folder = file.key.split("/")[-2] if "/" in file.key else ""
            in_folder = (folder.split("_", 1)[0].upper(), _folder_emotion(folder))
            if in_folder[0] in SPEAKERS and in_folder[1] and in_folder != (speaker, emotion):
                reason = f"{speaker} {emotion} in the name but the file is in {folder}"
                problems.append(Problem(file.key, file.location, reason))
                continue
            meta = {"gender": "female", "word": word, "sentence": f"Say the word {word}"}
            clips.append(Clip(f"{speaker}_{word}_{emotion}", file.location, emotion, speaker, meta=meta))
        return drop_duplicate_keys(clips, problems), problems

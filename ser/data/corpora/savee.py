"""SAVEE: 4 male speakers, ``AudioData/<speaker>/<code><nn>.wav`` or the flat ``<speaker>_<code><nn>.wav`` copy."""

from __future__ import annotations

import re

from .base import Clip, Corpus, Origin, Problem, Protocol, drop_duplicate_keys, stem_of

SPEAKERS = ("DC", "JE", "JK", "KL")
EMOTIONS: dict[str, str] = {
    "a": "angry",
    "d": "disgust",
    "f": "fearful",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprised",
}
CLIPS_PER_EMOTION = {code: 30 if code == "n" else 15 for code in EMOTIONS}  # 120 per speaker, 480 in all
SAMPLE_RATE = 44_100

_FLAT = re.compile(r"^([A-Z]{2})_([a-z]{1,2})(\d\d)$")
_IN_TREE = re.compile(r"^([a-z]{1,2})(\d\d)$")


class Savee(Corpus):
    """SAVEE: speakers DC, JE, JK and KL, 7 emotions coded a d f h n sa su, 480 clips at 44.1 kHz."""

    name = "savee"
    title = "SAVEE"
    label_names = tuple(EMOTIONS)
    label_map = EMOTIONS
    default_labels = ("angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised")
    protocol = Protocol(
        name="EmoBox SAVEE folds",
        description="EmoBox's four leave-one-speaker-out folds, in its order",
        group="speaker",
        folds={1: ("JE",), 2: ("KL",), 3: ("DC",), 4: ("JK",)},
    )
    origin = Origin(
        message=(
            "request SAVEE at http://kahlan.eps.surrey.ac.uk/savee/ and point data.root at the folder holding "
            "AudioData/ (or the flat DC_a01.wav copy)"
        )
    )

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        clips, problems = [], []
        for file in self.tree.audio_files():
            stem = stem_of(file.key)
            folder = file.key.split("/")[-2] if "/" in file.key else ""
            flat, in_tree = _FLAT.match(stem), _IN_TREE.match(stem)
            if flat is not None:
                speaker, code, number = flat.groups()
            elif in_tree is not None and folder in SPEAKERS:
                speaker, (code, number) = folder, in_tree.groups()
            else:
                reason = "name is neither <speaker>_<code><nn> (DC_a01) nor <code><nn> in a speaker folder (DC/a01)"
                problems.append(Problem(file.key, file.location, reason))
                continue
            bad = []
            if speaker not in SPEAKERS:
                bad.append(f"speaker {speaker} is not one of {' '.join(SPEAKERS)}")
            if code not in EMOTIONS:
                bad.append(f"emotion code {code} is not one of {' '.join(EMOTIONS)}")
            elif not 1 <= int(number) <= CLIPS_PER_EMOTION[code]:
                bad.append(f"number {number} is outside 01-{CLIPS_PER_EMOTION[code]:02d} for {code}")
            if flat is not None and folder in SPEAKERS and folder != speaker:
                bad.append(f"speaker {speaker} in the name but the file is in {folder}")
            if bad:
                problems.append(Problem(file.key, file.location, "; ".join(bad)))
                continue
            clips.append(Clip(f"{speaker}_{code}{number}", file.location, code, speaker, meta={"gender": "male"}))
        return drop_duplicate_keys(clips, problems), problems

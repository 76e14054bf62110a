"""Berlin EmoDB: ``wav/03a01Fa.wav`` (speaker, text, emotion letter, version), German, 535 clips at 16 kHz."""

from __future__ import annotations

import re

from .base import Clip, Corpus, Origin, Problem, Protocol, drop_duplicate_keys, stem_of

SPEAKERS: dict[str, str] = {
    "03": "male",
    "08": "female",
    "09": "female",
    "10": "male",
    "11": "male",
    "12": "male",
    "13": "female",
    "14": "female",
    "15": "male",
    "16": "female",
}
TEXTS: dict[str, str] = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
EMOTIONS: dict[str, str] = {
    "W": "angry",  # Wut
    "L": "bored",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fearful",  # Angst
    "F": "happy",  # Freude
    "T": "sad",  # Trauer
    "N": "neutral",
}
SAMPLE_RATE = 16_000

_NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")


class EmoDB(Corpus):
    """EmoDB: 10 speakers, 10 German texts, 7 emotions including boredom."""

    name = "emodb"
    title = "EmoDB"
    label_names = tuple(EMOTIONS)
    label_map = EMOTIONS
    default_labels = ("angry", "bored", "disgust", "fearful", "happy", "neutral", "sad")
    protocol = Protocol(
        name="EmoDB leave-one-speaker-out",
        description="ten folds, each testing on one speaker (EmoBox's five folds split clips, not speakers)",
        group="speaker",
        folds={k: (speaker,) for k, speaker in enumerate(SPEAKERS, start=1)},
    )
    origin = Origin(
        message="download http://emodb.bilderbar.info/download/download.zip and point data.root at it or at its wav/"
    )

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        clips, problems = [], []
        for file in self.tree.audio_files():
            stem = stem_of(file.key)
            match = _NAME.match(stem)
            if match is None:
                problems.append(
                    Problem(file.key, file.location, "name is not <speaker><text><emotion><version> (03a01Fa)")
                )
                continue
            speaker, text, emotion, version = match.groups()  # an unknown emotion letter: listing() names it
            bad = []
            if speaker not in SPEAKERS:
                bad.append(f"speaker {speaker} is not one of {' '.join(SPEAKERS)}")
            if text not in TEXTS:
                bad.append(f"text {text} is not one of {' '.join(TEXTS)}")
            if bad:
                problems.append(Problem(file.key, file.location, "; ".join(bad)))
                continue
            meta = {"gender": SPEAKERS[speaker], "text": text, "sentence": TEXTS[text], "version": version}
            clips.append(Clip(stem, file.location, emotion, speaker, meta=meta))
        return drop_duplicate_keys(clips, problems), problems

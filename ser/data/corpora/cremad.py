"""CREMA-D: ``AudioWAV/{ActorID}_{Sentence}_{Emotion}_{Level}.wav`` and ``VideoDemographics.csv``."""

from __future__ import annotations

import csv
import io
import re

from .base import Clip, Corpus, Origin, Problem, Protocol, drop_duplicate_keys, stem_of

ACTORS = tuple(range(1001, 1092))
SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
EMOTIONS: dict[str, str] = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
LEVELS: dict[str, str] = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
LEVELLED_SENTENCE = "IEO"  # the only sentence spoken at three levels; the rest, and every NEU, are XX


def release_stems(actors=ACTORS) -> list[str]:
    """The clip names the release would hold for ``actors`` were none missing (82 per actor)."""
    stems = []
    for actor in actors:
        for sentence in SENTENCES:
            for emotion in EMOTIONS:
                levels = ("LO", "MD", "HI") if sentence == LEVELLED_SENTENCE and emotion != "NEU" else ("XX",)
                stems.extend(f"{actor}_{sentence}_{emotion}_{level}" for level in levels)
    return stems


# The 20 clips that the release lacks (it holds 7442 of 91 x 82 = 7462): not errors of a copy.
MISSING_FROM_RELEASE: frozenset[str] = frozenset(
    ["1002_TIE_NEU_XX", "1076_ITS_NEU_XX"]
    + [stem for stem in release_stems((1008,)) if stem.startswith("1008_WSI_")]
    + [stem for stem in release_stems((1009,)) if stem.startswith("1009_MTI_")]
    + [stem for stem in release_stems((1019,)) if stem.startswith("1019_ITH_")]
)
RELEASE_CLIPS = 7442

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


class CremaD(Corpus):
    """CREMA-D: 91 actors (1001-1091), 12 sentences, 6 emotions, 7442 clips at 16 kHz."""

    name = "cremad"
    title = "CREMA-D"
    label_names = tuple(EMOTIONS)
    label_map = EMOTIONS
    default_labels = ("angry", "disgust", "fearful", "happy", "neutral", "sad")
    protocol = Protocol(
        name="CREMA-D actor folds",
        description=(
            "five actor-disjoint folds (actor 1001 + k - 1 every fifth actor); "
            "EmoBox's single CREMA-D fold is a random clip split, not speaker-independent"
        ),
        group="speaker",
        folds={k: tuple(str(a) for a in ACTORS[k - 1 :: 5]) for k in range(1, 6)},
    )
    origin = Origin(
        message=(
            "clone https://github.com/CheyneyComputerScience/CREMA-D with git-lfs (AudioWAV/ and "
            "VideoDemographics.csv) and point data.root at it"
        )
    )

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        genders, problems = self._genders()
        clips = []
        for file in self.tree.audio_files():
            stem = stem_of(file.key)
            match = _NAME.match(stem)
            if match is None:
                reason = "name is not {ActorID}_{Sentence}_{Emotion}_{Level} (e.g. 1001_DFA_ANG_XX)"
                problems.append(Problem(file.key, file.location, reason))
                continue
            actor, sentence, emotion, level = match.groups()
            bad = []
            if int(actor) not in ACTORS:
                bad.append(f"actor {actor} is not 1001-1091")
            if sentence not in SENTENCES:
                bad.append(f"sentence {sentence} is not one of {' '.join(SENTENCES)}")
            if level not in LEVELS:
                bad.append(f"level {level} is not LO/MD/HI/XX")
            if bad:
                problems.append(Problem(file.key, file.location, "; ".join(bad)))
                continue
            if genders is not None and int(actor) not in genders:
                problems.append(Problem(file.key, file.location, f"actor {actor} is not in VideoDemographics.csv"))
                continue
            meta = {
                "gender": (genders or {}).get(int(actor), "unknown"),
                "sentence": SENTENCES[sentence],
                "sentence_code": sentence,
                "intensity": LEVELS[level],
            }
            clips.append(Clip(stem, file.location, emotion, actor, meta=meta))
        return drop_duplicate_keys(clips, problems), problems

    def _genders(self) -> tuple[dict[int, str] | None, list[Problem]]:
        found = self.tree.find("VideoDemographics.csv")
        if not found:
            missing = Problem("VideoDemographics.csv", str(self.root), "missing: genders are unknown")
            return None, [missing]
        genders, problems = {}, []
        for row in csv.DictReader(io.StringIO(self.tree.read_text(found[0]))):
            try:
                genders[int(row["ActorID"])] = row["Sex"].strip().lower()
            except (KeyError, ValueError, AttributeError):
                problems.append(Problem("VideoDemographics.csv", found[0].location, f"unreadable row {row}"))
        return genders, problems

    def notes(self, clips) -> list[str]:
        present = {clip.key for clip in clips}
        actors = {int(clip.speaker) for clip in clips}
        absent = MISSING_FROM_RELEASE & set(release_stems(sorted(actors)))
        notes = []
        if absent - present:
            notes.append(
                f"{len(absent - present)} clip(s) of these actors are missing from the CREMA-D release itself "
                f"(it holds {RELEASE_CLIPS} of 7462); not errors"
            )
        return notes

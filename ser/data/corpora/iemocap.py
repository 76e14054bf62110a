"""IEMOCAP: ``Session{n}/sentences/wav/<dialog>/<utterance>.wav``, labelled by ``dialog/EmoEvaluation/<dialog>.txt``.

An EmoEvaluation file holds one line per utterance, ``[start - end]<TAB>utterance<TAB>emotion<TAB>[V, A, D]``,
each followed by the annotators' lines. The speaker of ``Ses01F_impro01_M003`` is the male speaker of
session 1: the letter that starts the utterance's *last* field, not the one after the session (that
one says who led the dialog).
"""

from __future__ import annotations

import re

from .base import Clip, Corpus, Origin, Problem, Protocol, drop_duplicate_keys, stem_of

SESSIONS = (1, 2, 3, 4, 5)
EMOTIONS: dict[str, str] = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "happy",  # excited merged into happy: the field's usual four classes
    "ang": "angry",
    "sad": "sad",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgust",
    "oth": "other",
    "xxx": "no agreement",
}
SAMPLE_RATE = 16_000

_UTTERANCE = re.compile(r"^Ses(\d\d)([FM])_(.+)_([FM])(\d{3})$")
_EVALUATION = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t\[")


def speaker_of(utterance: str) -> str:
    """``Ses01F_impro01_M003`` -> ``Ses01M``: the session and the first letter of the last field."""
    match = _UTTERANCE.match(utterance)
    if match is None:
        raise ValueError(f"{utterance} is not an IEMOCAP utterance name (Ses01F_impro01_M003)")
    return f"Ses{match.group(1)}{match.group(4)}"


class Iemocap(Corpus):
    """IEMOCAP: 5 sessions of 2 speakers; 4 classes (neutral, happy + excited, angry, sad), 5531 clips."""

    name = "iemocap"
    title = "IEMOCAP"
    label_names = tuple(EMOTIONS)
    label_map = EMOTIONS
    default_labels = ("angry", "happy", "neutral", "sad")
    protocol = Protocol(
        name="IEMOCAP leave-one-session-out",
        description="five folds, each testing on one session's two speakers (as EmoBox's)",
        group="session",
        folds={k: (f"Ses{k:02d}",) for k in SESSIONS},
    )
    origin = Origin(
        message=(
            "IEMOCAP is licence-restricted: request it at https://sail.usc.edu/iemocap/iemocap_release.htm, "
            "then point data.root at the folder holding Session1 ... Session5"
        )
    )

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        labels, problems = self._evaluations()
        clips, heard = [], set()
        for file in self.tree.audio_files():
            parts = file.key.split("/")
            if len(parts) < 4 or parts[-4:-2] != ["sentences", "wav"]:
                continue  # whole-dialog recordings and other audio are not clips
            utterance, session_dir = stem_of(file.key), next((p for p in parts if p.startswith("Session")), "")
            match = _UTTERANCE.match(utterance)
            if match is None:
                problems.append(Problem(file.key, file.location, "name is not an utterance (Ses01F_impro01_M003)"))
                continue
            heard.add(utterance)
            session = int(match.group(1))
            if session_dir and session_dir != f"Session{session}":
                reason = f"session {session} in the name but the file is in {session_dir}"
                problems.append(Problem(file.key, file.location, reason))
                continue
            dialog = parts[-2]
            if dialog not in labels:
                reason = f"no dialog/EmoEvaluation/{dialog}.txt in Session{session}"
                problems.append(Problem(file.key, file.location, reason))
                continue
            if utterance not in labels[dialog]:
                problems.append(Problem(file.key, file.location, f"no entry in EmoEvaluation/{dialog}.txt"))
                continue
            start, end, emotion = labels[dialog][utterance]
            meta = {
                "session": f"Ses{session:02d}",
                "gender": "female" if match.group(4) == "F" else "male",
                "dialog": dialog,
                "improvised": "_impro" in utterance,
                "turn_start": start,
                "turn_end": end,
            }
            clips.append(Clip(utterance, file.location, emotion, speaker_of(utterance), meta=meta))
        for dialog, entries in labels.items():
            for utterance in entries:
                if utterance not in heard:
                    session = utterance[3:5].lstrip("0")
                    where = f"Session{session}/sentences/wav/{dialog}/{utterance}.wav"
                    problems.append(Problem(utterance, where, f"missing file (listed in EmoEvaluation/{dialog}.txt)"))
        return drop_duplicate_keys(clips, problems), problems

    def _evaluations(self) -> tuple[dict[str, dict[str, tuple[float, float, str]]], list[Problem]]:
        """dialog -> utterance -> (start, end, emotion), from every ``dialog/EmoEvaluation/*.txt``."""
        labels: dict[str, dict[str, tuple[float, float, str]]] = {}
        problems = []
        for file in self.tree.files():
            parts = file.key.split("/")
            if len(parts) < 3 or parts[-3:-1] != ["dialog", "EmoEvaluation"] or not parts[-1].endswith(".txt"):
                continue
            entries = labels.setdefault(stem_of(file.key), {})
            for line in self.tree.read_text(file).splitlines():
                match = _EVALUATION.match(line)
                if match is not None:
                    start, end, utterance, emotion = match.groups()
                    entries[utterance] = (float(start), float(end), emotion)
                elif line.startswith("[") and "\t" in line:
                    problems.append(Problem(file.key, file.location, f"unreadable evaluation line {line[:60]!r}"))
        return labels, problems

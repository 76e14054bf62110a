"""Offline stand-ins of the built-in corpora, each in its real layout, spoken by eSpeak NG.

A stand-in has the corpus's file and folder names, sample rate, bit depth (16-bit PCM) and channels
(mono), its side files (CREMA-D's ``VideoDemographics.csv``, IEMOCAP's ``EmoEvaluation/*.txt`` and
transcriptions) and speech in its language (German for EmoDB). Emotions are spoken with
:mod:`ser.data.synth`'s voices and styles. Stand-ins are small by default (a few speakers, a few
sentences each: the tests' sizes); ``speakers`` and ``full=True`` give more.

RAVDESS's stand-in is :func:`ser.data.synth.synthesize_corpus`'s corpus.
"""

from __future__ import annotations

import csv
import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ...atomic import atomic_dir
from ...errors import UserError
from ..synth import actor_voice, emotion_style, speak, synthesize_corpus
from . import cremad, emodb, savee, tess

FORMATS = ("ravdess", "cremad", "tess", "savee", "emodb", "iemocap")
DEFAULT_SPEAKERS = {"ravdess": 2, "cremad": 2, "tess": 2, "savee": 2, "emodb": 2, "iemocap": 4}
MAX_SPEAKERS = {"ravdess": 24, "cremad": 91, "tess": 2, "savee": 4, "emodb": 10, "iemocap": 10}

_REFERENCE_DB = -26.0  # RMS of neutral speech, dBFS, as in ser.data.synth
_NOISE_DB = -64.0
_PAD_SECONDS = 0.2


class StandInError(UserError):
    """A stand-in that cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class Utterance:
    """One file of a stand-in: what is said, how, by whom, and how it is stored."""

    path: str  # relative to the corpus root
    text: str
    style: str  # a key of ser.data.synth.STYLES
    intensity: int  # 1 normal, 2 strong
    voice: int  # ser.data.synth actor number 1-24: odd male, even female
    language: str = "en-us"
    sample_rate: int = 16_000
    expressiveness: float = 1.0  # multiplies the style's deviation from neutral


def _voice_number(index: int, male: bool) -> int:
    """A distinct synth voice for the ``index``-th speaker of a gender (12 voices of each)."""
    return 2 * (index % 12) + (1 if male else 2)


# ---------------------------------------------------------------------------------------------
# What each corpus holds


def _cremad(speakers: int, full: bool) -> tuple[list[Utterance], dict[str, str]]:
    actors = cremad.ACTORS[:speakers]
    sentences = set(cremad.SENTENCES) if full else {"IEO", "TIE", "DFA"}
    styles = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
    levels = {"LO": (1, 0.6), "MD": (1, 1.0), "HI": (2, 1.0), "XX": (1, 1.0)}
    male = {actor: index % 2 == 0 for index, actor in enumerate(actors)}
    utterances = []
    for stem in cremad.release_stems(actors):
        actor, sentence, emotion, level = stem.split("_")
        if sentence not in sentences or stem in cremad.MISSING_FROM_RELEASE:
            continue
        intensity, expressiveness = levels[level]
        index = actors.index(int(actor))
        utterances.append(
            Utterance(
                f"AudioWAV/{stem}.wav",
                cremad.SENTENCES[sentence],
                styles[emotion],
                intensity,
                _voice_number(index // 2, male[int(actor)]),
                expressiveness=expressiveness,
            )
        )
    demographics = io.StringIO()
    writer = csv.writer(demographics, lineterminator="\n")
    writer.writerow(["ActorID", "Age", "Sex", "Race", "Ethnicity"])
    for index, actor in enumerate(actors):
        writer.writerow(
            [actor, 20 + (7 * index) % 50, "Male" if male[actor] else "Female", "Caucasian", "Not Hispanic"]
        )
    return utterances, {"VideoDemographics.csv": demographics.getvalue()}


_TESS_WORDS = ("back", "bar", "food", "base", "bath", "bean", "beg", "bite", "boat", "bone", "book", "bought")
_TESS_HIGH_RATE = ("OAF", "food", "fear", 96_000)  # the release's one 96 kHz file


def _tess(speakers: int, full: bool) -> tuple[list[Utterance], dict[str, str]]:
    styles = {
        "angry": "angry",
        "disgust": "disgust",
        "fear": "fearful",
        "happy": "happy",
        "neutral": "neutral",
        "ps": "surprised",
        "sad": "sad",
    }
    words = _TESS_WORDS if full else _TESS_WORDS[:3]
    utterances = []
    for index, speaker in enumerate(list(tess.SPEAKERS)[:speakers]):
        for emotion, style in styles.items():
            folder = tess.FOLDERS[(speaker, emotion)]
            for word in words:
                rate = _TESS_HIGH_RATE[3] if (speaker, word, emotion) == _TESS_HIGH_RATE[:3] else tess.SAMPLE_RATE
                utterances.append(
                    Utterance(
                        f"{folder}/{speaker}_{word}_{emotion}.wav",
                        f"Say the word {word}",
                        style,
                        1,
                        _voice_number(2 * index + 1, male=False),
                        sample_rate=rate,
                    )
                )
    return utterances, {}


_SAVEE_SENTENCES = (
    "She had your dark suit in greasy wash water all year.",
    "Don't ask me to carry an oily rag like that.",
    "Will you tell me why?",
    "Who authorized the unlimited expense account?",
    "The small boy put the worm on the hook.",
)


def _savee(speakers: int, full: bool, layout: str) -> tuple[list[Utterance], dict[str, str]]:
    styles = savee.EMOTIONS  # each code spoken in the style of the emotion it names
    utterances = []
    for index, speaker in enumerate(savee.SPEAKERS[:speakers]):
        for code, style in styles.items():
            count = savee.CLIPS_PER_EMOTION[code] if full else (3 if code == "n" else 2)
            for number in range(1, count + 1):
                name = f"{code}{number:02d}"
                path = f"ALL/{speaker}_{name}.wav" if layout == "flat" else f"AudioData/{speaker}/{name}.wav"
                utterances.append(
                    Utterance(
                        path,
                        _SAVEE_SENTENCES[(number - 1) % len(_SAVEE_SENTENCES)],
                        style,
                        1,
                        _voice_number(index, male=True),
                        sample_rate=savee.SAMPLE_RATE,
                    )
                )
    return utterances, {}


def _emodb(speakers: int, full: bool) -> tuple[list[Utterance], dict[str, str]]:
    # Boredom is spoken as a strongly calm voice: slow, low and flat.
    styles = {"W": ("angry", 1), "L": ("calm", 2), "E": ("disgust", 1), "A": ("fearful", 1)}
    styles.update({"F": ("happy", 1), "T": ("sad", 1), "N": ("neutral", 1)})
    texts = list(emodb.TEXTS) if full else ["a01", "a02"]
    utterances, counts = [], {"male": 0, "female": 0}
    for speaker, gender in list(emodb.SPEAKERS.items())[:speakers]:
        voice = _voice_number(counts[gender], male=gender == "male")
        counts[gender] += 1
        for text in texts:
            for letter, (style, intensity) in styles.items():
                utterances.append(
                    Utterance(
                        f"wav/{speaker}{text}{letter}a.wav", emodb.TEXTS[text], style, intensity, voice, language="de"
                    )
                )
    return utterances, {}


_IEMOCAP_LINES = (
    "Excuse me.",
    "Do you have your forms?",
    "Yeah.",
    "Let me see them.",
    "Is there a problem?",
    "Who told you to get in this line?",
    "You did.",
    "You were standing at the beginning and you directed me.",
)
# Own labels, the styles they are spoken in, and their dimensional rating.
_IEMOCAP_EMOTIONS = (
    ("neu", "neutral", 1, "[2.5000, 2.5000, 2.5000]"),
    ("ang", "angry", 2, "[1.5000, 4.0000, 4.0000]"),
    ("sad", "sad", 1, "[1.5000, 2.0000, 2.0000]"),
    ("hap", "happy", 1, "[4.0000, 3.0000, 3.0000]"),
    ("exc", "happy", 2, "[4.0000, 4.0000, 3.5000]"),
    ("fru", "angry", 1, "[2.0000, 3.0000, 3.0000]"),
    ("neu", "neutral", 1, "[3.0000, 2.0000, 2.5000]"),
    ("xxx", "sad", 1, "[2.5000, 3.0000, 2.5000]"),
)
_IEMOCAP_WORDS = {
    "neu": "Neutral",
    "ang": "Anger",
    "sad": "Sadness",
    "hap": "Happiness",
    "exc": "Excited",
    "fru": "Frustration",
}


def _iemocap(speakers: int, full: bool) -> tuple[list[Utterance], dict[str, str]]:
    sessions = range(1, math.ceil(speakers / 2) + 1)
    utterances, side = [], {}
    for session in sessions:
        dialogs = [f"Ses{session:02d}F_impro01", f"Ses{session:02d}M_impro01"]
        if full:
            dialogs += [f"Ses{session:02d}F_script01_1", f"Ses{session:02d}M_script01_1"]
        for dialog_index, dialog in enumerate(dialogs):
            evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            transcript, clock = [], 2.0
            for turn, line in enumerate(_IEMOCAP_LINES):
                letter = "FM"[(turn + dialog_index) % 2]  # the dialog's leader speaks first
                utterance = f"{dialog}_{letter}{turn // 2:03d}"
                own, style, intensity, vad = _IEMOCAP_EMOTIONS[(turn + 3 * dialog_index) % len(_IEMOCAP_EMOTIONS)]
                start, end = clock, clock + 1.5 + 0.1 * len(line.split())
                clock = end + 0.7
                evaluation += [f"[{start:.4f} - {end:.4f}]\t{utterance}\t{own}\t{vad}"]
                word = _IEMOCAP_WORDS.get(own, "Other")
                evaluation += [f"C-E{n}:\t{word};\t()" for n in (1, 2, 4)]
                evaluation += ["A-E1:\tval 3; act 3; dom  3;\t()", ""]
                transcript.append(f"{utterance} [{start:08.4f}-{end:08.4f}]: {line}")
                utterances.append(
                    Utterance(
                        f"Session{session}/sentences/wav/{dialog}/{utterance}.wav",
                        line,
                        style,
                        intensity,
                        _voice_number(session - 1, male=letter == "M"),
                    )
                )
            side[f"Session{session}/dialog/EmoEvaluation/{dialog}.txt"] = "\n".join(evaluation) + "\n"
            side[f"Session{session}/dialog/transcriptions/{dialog}.txt"] = "\n".join(transcript) + "\n"
    return utterances, side


# ---------------------------------------------------------------------------------------------
# Speech


def _resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """``(T,)`` float32 from ``source_rate`` to ``target_rate``.

    torchaudio's polyphase resampler builds a kernel of (target / gcd) phases, which for co-prime rates
    such as TESS's 24414 Hz is tens of megabytes per clip; linear interpolation is plenty for a stand-in there.
    """
    if source_rate == target_rate:
        return samples
    if target_rate // math.gcd(source_rate, target_rate) <= 1000:
        import torch
        import torchaudio.functional as AF

        return AF.resample(torch.from_numpy(samples), source_rate, target_rate).numpy()
    length = int(round(len(samples) * target_rate / source_rate))
    return np.interp(np.arange(length) * source_rate / target_rate, np.arange(len(samples)), samples).astype(np.float32)


def render(utterance: Utterance, seed: int = 0) -> np.ndarray:
    """The audio of one stand-in file: int16 ``(T,)`` at ``utterance.sample_rate``, mono."""
    voice = actor_voice(utterance.voice, seed)
    style = emotion_style(utterance.style, utterance.intensity, voice.expressiveness * utterance.expressiveness)
    rng = np.random.default_rng([seed, zlib.crc32(utterance.path.encode())])
    spoken = speak(utterance.text.rstrip(".!?"), voice, style, rng, language=utterance.language)
    speech = _resample(spoken.astype(np.float32) / 32768.0, voice.source_rate, utterance.sample_rate)
    rms = float(np.sqrt(np.mean(speech**2))) or 1.0
    speech = speech * (10 ** ((_REFERENCE_DB + voice.gain_db + style.gain_db) / 20) / rms)
    pad = np.zeros(int(_PAD_SECONDS * utterance.sample_rate), np.float32)
    clip = np.concatenate([pad, speech, pad])
    clip += rng.standard_normal(clip.size).astype(np.float32) * 10 ** (_NOISE_DB / 20)
    return np.clip(np.round(clip * 32767), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------
# The stand-in


def stand_in_files(
    format: str, speakers: int | None = None, full: bool = False, layout: str = "tree"
) -> tuple[list[Utterance], dict[str, str]]:
    """What the stand-in of ``format`` holds: its audio files and its side files (relative path -> text)."""
    if format not in FORMATS or format == "ravdess":
        raise StandInError(f"--format {format} is not a stand-in of these; choose one of {', '.join(FORMATS)}")
    count = DEFAULT_SPEAKERS[format] if speakers is None else int(speakers)
    if not 1 <= count <= MAX_SPEAKERS[format]:
        raise StandInError(f"--speakers {count} is outside 1-{MAX_SPEAKERS[format]} for {format}; choose fewer")
    if layout not in ("tree", "flat") or (layout == "flat" and format != "savee"):
        raise StandInError(f"layout {layout!r} is not offered for {format}; use tree (or flat for savee)")
    if format == "cremad":
        return _cremad(count, full)
    if format == "tess":
        return _tess(count, full)
    if format == "savee":
        return _savee(count, full, layout)
    if format == "emodb":
        return _emodb(count, full)
    return _iemocap(count, full)


def write_stand_in(
    out_dir: str | Path,
    format: str,
    speakers: int | None = None,
    seed: int = 0,
    full: bool = False,
    layout: str = "tree",
    progress: bool = False,
) -> Path:
    """Write a stand-in of corpus ``format`` at ``out_dir`` (new or empty) and return ``out_dir``.

    Args:
        format: one of :data:`FORMATS`.
        speakers: how many of the corpus's speakers (default :data:`DEFAULT_SPEAKERS`; IEMOCAP
            counts two per session).
        seed: the same seed gives the same audio on the same software stack.
        full: every sentence, word or text of each speaker instead of a few.
        layout: ``flat`` writes SAVEE's common flat copy (``ALL/DC_a01.wav``) instead of ``AudioData/``.
    """
    out_dir = Path(out_dir)
    if format == "ravdess":
        count = DEFAULT_SPEAKERS["ravdess"] if speakers is None else int(speakers)
        if not 1 <= count <= MAX_SPEAKERS["ravdess"]:
            raise StandInError(f"--speakers {count} is outside 1-24 for ravdess; choose fewer")
        return synthesize_corpus(out_dir, actors=count, seed=seed, progress=progress)
    utterances, side_files = stand_in_files(format, speakers, full, layout)
    if out_dir.exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise StandInError(f"{out_dir} exists and is not an empty folder; choose a new one")
        out_dir.rmdir()
    from rich.progress import track

    with atomic_dir(out_dir) as building:
        for relative, text in side_files.items():
            (building / relative).parent.mkdir(parents=True, exist_ok=True)
            (building / relative).write_text(text, encoding="utf-8")
        for utterance in track(utterances, description=f"Speaking {format}", disable=not progress):
            path = building / utterance.path
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, render(utterance, seed), utterance.sample_rate, subtype="PCM_16", format="WAV")
    return out_dir


def stand_in_speakers(format: str) -> Sequence[str]:
    """The speakers a default stand-in of ``format`` holds, as the plug-in names them."""
    count = DEFAULT_SPEAKERS[format]
    if format == "cremad":
        return [str(a) for a in cremad.ACTORS[:count]]
    if format == "tess":
        return list(tess.SPEAKERS)[:count]
    if format == "savee":
        return list(savee.SPEAKERS[:count])
    if format == "emodb":
        return list(emodb.SPEAKERS)[:count]
    if format == "iemocap":
        return [f"Ses{s:02d}{g}" for s in range(1, math.ceil(count / 2) + 1) for g in "FM"]
    return [f"{a:02d}" for a in range(1, count + 1)]

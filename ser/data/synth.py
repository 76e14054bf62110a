"""An offline stand-in for RAVDESS, synthesised with eSpeak NG.

The demo experiment and the test suite cannot download RAVDESS, so they use this corpus instead:
the same layout, names and audio format (``out_dir/Actor_XX/03-01-EE-II-SS-RR-XX.wav``, 48 kHz,
16-bit PCM, mono, 60 clips per actor), with the two RAVDESS statements really spoken by eSpeak NG.
eSpeak comes from the ``espeakng-loader`` wheel (library and voice data bundled) and is driven
through ``ctypes``, so no system package is needed.

The emotion is carried the way actors carry it: speaking rate, pitch level and range, pauses,
loudness and voice quality (spectral tilt, harshness, nasality, tremor), plus eSpeak's
exclamation and question intonation. Strong intensity exaggerates an emotion's deviation from
neutral. Odd actors are male and even actors female, as in RAVDESS, and each actor has its own
timbre, pitch, tempo, vocal-tract length, level and expressiveness; repetitions differ a little.

Everything is seeded: the same ``seed`` gives the same bytes on the same software stack.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ..atomic import atomic_file, write_json
from .corpus import holds_corpus
from .ravdess import EMOTION_CODES, EMOTION_TO_CODE, NUM_ACTORS, SPEECH_CHANNEL, SPEECH_MODALITY, STATEMENTS, ClipName

log = logging.getLogger(__name__)

VERSION = 1  # bump whenever the audio that a seed produces changes, so old corpora are re-made
SAMPLE_RATE = 48_000  # RAVDESS's rate
MARKER = ".ser-synth.json"  # written last: its presence means the corpus is complete
_PARTIAL = ".ser-synth.partial.json"  # written first: claims the directory while files are being made

# Distinct seed streams, so an actor's voice and its clips never share random numbers.
_VOICE_STREAM, _CLIP_STREAM = 1, 2


# ---------------------------------------------------------------------------------------------
# The corpus layout


def corpus_clips(actors: Sequence[int]) -> list[ClipName]:
    """Every speech clip RAVDESS has for these actors: 60 each (neutral has no strong intensity)."""
    clips = []
    for actor in actors:
        for emotion in EMOTION_CODES.values():
            for intensity in (1,) if emotion == "neutral" else (1, 2):
                for statement in STATEMENTS:
                    for repetition in (1, 2):
                        clips.append(
                            ClipName(SPEECH_MODALITY, SPEECH_CHANNEL, emotion, intensity, statement, repetition, actor)
                        )
    return clips


def clip_path(out_dir: str | Path, clip: ClipName) -> Path:
    return Path(out_dir) / f"Actor_{clip.actor:02d}" / f"{clip.stem}.wav"


# ---------------------------------------------------------------------------------------------
# Actors: who speaks


# eSpeak NG voice variants (files in espeak-ng-data/voices/!v). Only natural-sounding ones: the
# robot, whisper and novelty variants would make the actor, not the emotion, the loudest cue.
_MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "Andy", "Lee", "m2", "m3", "m6")
_FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "belinda", "linda", "steph", "aunty", "f2", "f3", "f4")

ESPEAK_RATE = 22_050  # eSpeak NG's output rate (it reports it from espeak_Initialize)
_VTL_STEP = 150  # steps of the assumed source rate; multiples of 150 keep 48 kHz resampling kernels small


@dataclass(frozen=True)
class Voice:
    """How one actor speaks when neutral."""

    variant: str  # eSpeak voice variant: timbre and base pitch
    pitch: float  # eSpeak pitch parameter (0-100, 50 = the variant's own; +1 is about +1.4 % F0)
    pitch_range: float  # eSpeak range parameter (0-100, 50 = normal)
    rate: float  # words per minute
    source_rate: (
        int  # rate eSpeak's output is taken to have: != 22050 scales F0 and formants alike (vocal tract length)
    )
    gain_db: float  # level relative to the corpus' reference level
    expressiveness: float  # multiplies every emotion's deviation from neutral

    @property
    def gender(self) -> str:
        return "female" if self.variant in _FEMALE_VARIANTS else "male"


def actor_voice(actor: int, seed: int = 0) -> Voice:
    """The voice of actor 1-24: odd actors male, even actors female, each one different."""
    if not 1 <= actor <= NUM_ACTORS:
        raise ValueError(f"actor {actor} is outside 1-{NUM_ACTORS}; pick RAVDESS actor numbers")
    rng = np.random.default_rng([_VOICE_STREAM, seed, actor])
    female = actor % 2 == 0
    variants = _FEMALE_VARIANTS if female else _MALE_VARIANTS
    # Women's vocal tracts are shorter on average: their scaling leans upward, men's downward.
    vtl_steps = rng.integers(-1, 7) if female else rng.integers(-6, 2)
    return Voice(
        variant=variants[(actor - 1) // 2],
        pitch=float(np.clip(rng.normal(50, 6), 38, 62)),
        pitch_range=float(np.clip(rng.normal(50, 6), 38, 62)),
        rate=float(np.clip(175 * math.exp(rng.normal(0, 0.07)), 150, 205)),
        source_rate=ESPEAK_RATE + _VTL_STEP * int(vtl_steps),
        gain_db=float(rng.uniform(-2, 2)),
        expressiveness=float(rng.uniform(0.8, 1.2)),
    )


# ---------------------------------------------------------------------------------------------
# Emotions: how it is said


@dataclass(frozen=True)
class Style:
    """An emotion as deviations from neutral speech."""

    rate: float = 1.0  # x the actor's neutral speaking rate
    pitch: float = 0.0  # + eSpeak pitch units
    pitch_range: float = 0.0  # + eSpeak range units
    word_gap: float = 0.0  # pause between words, in 10 ms units
    gain_db: float = 0.0  # loudness
    lowpass_hz: float | None = None  # a darker, muffled voice
    highpass_hz: float | None = None  # a thin voice
    treble_db: float = 0.0  # a brighter, tense voice (boost above ~3 kHz)
    nasal_db: float = 0.0  # a resonance boost near 1 kHz
    drive_db: float = 0.0  # overdrive: a harsh, strained voice
    tremolo: float = 0.0  # depth of a ~7 Hz amplitude tremor (0-1)
    punctuation: str = "."  # "!" and "?" switch eSpeak to exclamation and question intonation


# After the vocal-emotion literature (Murray & Arnott 1993; Scherer 2003): arousal raises rate,
# pitch, range and loudness; sadness and calm lower them; fear trembles; disgust drawls.
STYLES: dict[str, Style] = {
    "neutral": Style(),
    "calm": Style(rate=0.88, pitch=-4, pitch_range=-15, word_gap=2, gain_db=-3, lowpass_hz=5500),
    "happy": Style(rate=1.10, pitch=10, pitch_range=25, gain_db=3, treble_db=3, punctuation="!"),
    "sad": Style(rate=0.78, pitch=-8, pitch_range=-25, word_gap=3, gain_db=-5, lowpass_hz=3500),
    "angry": Style(rate=1.15, pitch=6, pitch_range=20, gain_db=6, treble_db=5, drive_db=6, punctuation="!"),
    "fearful": Style(rate=1.25, pitch=14, pitch_range=10, gain_db=1, highpass_hz=250, tremolo=0.3),
    "disgust": Style(rate=0.85, pitch=-8, pitch_range=5, word_gap=3, gain_db=1, nasal_db=6),
    "surprised": Style(rate=1.0, pitch=16, pitch_range=35, gain_db=3, treble_db=2, punctuation="?"),
}
STRONG = 1.8  # strong intensity moves this many times as far from neutral as normal intensity
_OPEN_LOWPASS_HZ = 8000.0  # where a low-pass stops mattering for speech: the "neutral" end of the scale
_OPEN_HIGHPASS_HZ = 60.0


def emotion_style(emotion: str, intensity: int, expressiveness: float = 1.0) -> Style:
    """The style of ``emotion`` at RAVDESS intensity 1 (normal) or 2 (strong)."""
    if emotion not in STYLES:
        raise ValueError(f"unknown emotion {emotion!r}; use one of {', '.join(STYLES)}")
    if intensity not in (1, 2) or (emotion == "neutral" and intensity == 2):
        raise ValueError(f"intensity {intensity} does not exist for {emotion}; use 1 (or 2 for a non-neutral emotion)")
    k = (STRONG if intensity == 2 else 1.0) * expressiveness
    s = STYLES[emotion]
    # Filter corners scale geometrically between "no filter" and the emotion's corner.
    lowpass = None if s.lowpass_hz is None else _OPEN_LOWPASS_HZ * (s.lowpass_hz / _OPEN_LOWPASS_HZ) ** k
    highpass = None if s.highpass_hz is None else _OPEN_HIGHPASS_HZ * (s.highpass_hz / _OPEN_HIGHPASS_HZ) ** k
    return replace(
        s,
        rate=s.rate**k,
        pitch=s.pitch * k,
        pitch_range=s.pitch_range * k,
        word_gap=s.word_gap * k,
        gain_db=s.gain_db * k,
        lowpass_hz=lowpass,
        highpass_hz=highpass,
        treble_db=s.treble_db * k,
        nasal_db=s.nasal_db * k,
        drive_db=s.drive_db * k,
        tremolo=min(0.7, s.tremolo * k),
    )


# ---------------------------------------------------------------------------------------------
# eSpeak NG through ctypes (API of espeak-ng/speak_lib.h)

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # retrieval through the callback; espeak_Synth returns when done
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_chunks: list[np.ndarray] = []


@_SYNTH_CALLBACK
def _collect(wav, count, events):
    if wav and count > 0:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    return 0  # 0 = continue


# eSpeak keeps hidden state from one utterance to the next (the phase of its pitch flutter, its
# roughness cycle, its AGC) and its breath noise calls libc rand(), so the same call gives other
# samples depending on what was said before. For byte-identical output whatever the order of
# work, every utterance gets a freshly loaded library (cheap next to the synthesis) and a seeded rand(). The
# library is a private copy, because dlclose() does not unload a library that someone else in
# the process (a phonemiser, say) has also opened.
_library_copy: str | None = None


def _set_library(path: str | None) -> None:
    global _library_copy
    _library_copy = path


def _copy_library(folder: str | Path) -> str:
    import espeakng_loader

    source = Path(espeakng_loader.get_library_path())
    target = Path(folder) / source.name
    shutil.copyfile(source, target)
    return str(target)


def _private_library() -> str:
    if _library_copy is None:
        folder = tempfile.mkdtemp(prefix="ser-espeak-")
        atexit.register(shutil.rmtree, folder, True)
        _set_library(_copy_library(folder))
    return _library_copy


def _libc_srand(seed: int) -> None:
    ctypes.CDLL(None).srand(ctypes.c_uint(seed))


def _unload(lib: ctypes.CDLL) -> None:
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary
    close(lib._handle)


def espeak(
    text: str,
    variant: str,
    rate: float,
    pitch: float,
    pitch_range: float,
    word_gap: float = 0,
    noise_seed: int = 0,
    language: str = "en-us",
) -> np.ndarray:
    """Speak ``text`` with eSpeak NG's ``language`` voice (American English by default) and ``variant``.

    Returns:
        int16 samples at :data:`ESPEAK_RATE`, shape ``(samples,)``.
    """
    import espeakng_loader

    lib = ctypes.CDLL(_private_library())
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()  # the folder holding espeak-ng-data
        rate_hz = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
        if rate_hz != ESPEAK_RATE:
            raise RuntimeError(
                f"eSpeak NG failed to start (espeak_Initialize gave {rate_hz}); reinstall espeakng-loader"
            )
        lib.espeak_SetSynthCallback(_collect)
        if lib.espeak_SetVoiceByName(f"{language}+{variant}".encode()) != _EE_OK:
            raise RuntimeError(f"eSpeak NG has no voice {language}+{variant}; reinstall espeakng-loader")
        parameters = {
            _PARAM_RATE: np.clip(rate, 80, 450),
            _PARAM_VOLUME: 100,  # loudness is set after the effects, where it can be controlled exactly
            _PARAM_PITCH: np.clip(pitch, 0, 100),
            _PARAM_RANGE: np.clip(pitch_range, 0, 100),
            _PARAM_WORDGAP: max(word_gap, 0),
        }
        for parameter, value in parameters.items():
            lib.espeak_SetParameter(parameter, int(round(float(value))), 0)
        _libc_srand(noise_seed)
        _chunks.clear()
        encoded = text.encode()
        status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Terminate()
        if status != _EE_OK or not _chunks:
            raise RuntimeError(f"eSpeak NG could not speak {text!r} (status {status}); reinstall espeakng-loader")
        return np.concatenate(_chunks)
    finally:
        _chunks.clear()
        _unload(lib)


# ---------------------------------------------------------------------------------------------
# One clip

_REFERENCE_DB = -26.0  # RMS of neutral speech, dBFS
_PEAK_LIMIT = 0.89  # peaks stay under 0.9 full scale
_NOISE_DB = -64.0  # the room: faint, like RAVDESS's studio
_PAD_SECONDS = (0.5, 1.0)  # near-silence before and after the speech
_TREMOLO_HZ = 7.0
_FADE_SECONDS = 0.005


def render_clip(clip: ClipName, seed: int = 0) -> np.ndarray:
    """The audio of one clip, as RAVDESS would store it.

    Returns:
        int16 samples at 48 kHz, shape ``(samples,)``: speech with 0.5-1 s of faint noise either side.
    """
    voice = actor_voice(clip.actor, seed)
    style = emotion_style(clip.emotion, clip.intensity, voice.expressiveness)
    fields = (EMOTION_TO_CODE[clip.emotion], clip.intensity, clip.statement, clip.repetition)
    rng = np.random.default_rng([_CLIP_STREAM, seed, clip.actor, *fields])

    samples = speak(STATEMENTS[clip.statement], voice, style, rng)
    speech = torch.from_numpy(_trim(samples).astype(np.float32) / 32768.0)[None]
    speech = _voice_quality(speech / speech.abs().max() * 0.5, style, float(rng.uniform(0, 2 * math.pi)))
    speech = AF.resample(speech, voice.source_rate, SAMPLE_RATE)
    speech = _fade(speech, int(_FADE_SECONDS * SAMPLE_RATE))
    speech = _set_level(speech, _REFERENCE_DB + voice.gain_db + style.gain_db + rng.normal(0, 0.5))
    return _to_pcm16(_in_room(speech[0].numpy(), rng))


def speak(text: str, voice: Voice, style: Style, rng: np.random.Generator, language: str = "en-us") -> np.ndarray:
    """``text`` as ``voice`` says it in ``style``: int16 ``(samples,)`` at :data:`ESPEAK_RATE`.

    Nobody says a sentence the same way twice: each take draws a little tempo, pitch and range jitter
    from ``rng``.
    """
    return espeak(
        text + style.punctuation,
        voice.variant,
        rate=voice.rate * style.rate * math.exp(rng.normal(0, 0.03)),
        pitch=voice.pitch + style.pitch + rng.normal(0, 1.5),
        pitch_range=voice.pitch_range + style.pitch_range + rng.normal(0, 3),
        word_gap=style.word_gap,
        noise_seed=int(rng.integers(2**31)),
        language=language,
    )


def _trim(samples: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Drop eSpeak's own leading and trailing silence, so the padding alone sets it."""
    loud = np.flatnonzero(np.abs(samples) > threshold * np.abs(samples).max())
    return samples[loud[0] : loud[-1] + 1]


def _voice_quality(wave: torch.Tensor, style: Style, tremolo_phase: float) -> torch.Tensor:
    """Spectral and amplitude effects of ``style`` on ``wave``, shape ``(1, samples)`` at eSpeak's rate."""
    if style.drive_db > 0:
        wave = AF.overdrive(wave, gain=style.drive_db, colour=20)
    if style.treble_db:
        wave = AF.treble_biquad(wave, ESPEAK_RATE, style.treble_db, central_freq=3000)
    if style.nasal_db:
        wave = AF.equalizer_biquad(wave, ESPEAK_RATE, center_freq=1000, gain=style.nasal_db, Q=1.5)
    if style.lowpass_hz is not None:
        wave = AF.lowpass_biquad(wave, ESPEAK_RATE, style.lowpass_hz)
    if style.highpass_hz is not None:
        wave = AF.highpass_biquad(wave, ESPEAK_RATE, style.highpass_hz)
    if style.tremolo > 0:
        t = torch.arange(wave.shape[-1]) / ESPEAK_RATE
        wave = wave * (1 - style.tremolo * 0.5 * (1 + torch.sin(2 * math.pi * _TREMOLO_HZ * t + tremolo_phase)))
    return wave


def _fade(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Short fades, so the trimmed speech does not start or stop with a click."""
    ramp = torch.linspace(0, 1, length)
    wave = wave.clone()
    wave[..., :length] *= ramp
    wave[..., -length:] *= ramp.flip(0)
    return wave


def _set_level(wave: torch.Tensor, rms_db: float) -> torch.Tensor:
    """Scale ``wave`` to an RMS of ``rms_db`` dBFS, pulled down if its peak would reach 0.9."""
    gain_db = rms_db - 20 * math.log10(float(wave.pow(2).mean().sqrt()))
    wave = AF.gain(wave, gain_db)
    peak = float(wave.abs().max())
    # Only the loudest strong clips get here; they stay the loudest, just not clipped.
    return wave * (_PEAK_LIMIT / peak) if peak > _PEAK_LIMIT else wave


def _in_room(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pad ``speech`` (48 kHz) with near-silence and lay faint room noise over the whole clip."""
    before, after = (int(rng.uniform(*_PAD_SECONDS) * SAMPLE_RATE) for _ in range(2))
    clip = np.concatenate([np.zeros(before, np.float32), speech, np.zeros(after, np.float32)])
    # Room noise is mostly low-frequency: white noise through a short moving average (a gentle low-pass).
    noise = np.convolve(rng.standard_normal(clip.size, dtype=np.float32), np.full(8, 1 / 8, np.float32), "same")
    level = 10 ** ((_NOISE_DB + rng.uniform(-3, 3)) / 20)
    return clip + noise * (level / max(float(np.sqrt(np.mean(noise**2))), 1e-12))


def _to_pcm16(wave: np.ndarray) -> np.ndarray:
    return np.clip(np.round(wave * 32767), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------
# The corpus


def _write_clip(task: tuple[str, ClipName, int]) -> None:
    """Render one clip and write it atomically: readers never see half a file."""
    path, clip, seed = Path(task[0]), task[1], task[2]
    samples = render_clip(clip, seed)
    with atomic_file(path) as tmp:
        sf.write(tmp, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _init_worker(library: str) -> None:
    # One clip per core: torch's own thread pool would only oversubscribe the cores.
    torch.set_num_threads(1)
    _set_library(library)


def _actor_list(actors: int | Sequence[int]) -> list[int]:
    if isinstance(actors, (int, np.integer)):
        if not 1 <= actors <= NUM_ACTORS:
            raise ValueError(
                f"actors={actors} is outside 1-{NUM_ACTORS}; pass a count of actors or a list of actor numbers"
            )
        return list(range(1, int(actors) + 1))
    chosen = sorted({int(a) for a in actors})
    if not chosen or chosen[0] < 1 or chosen[-1] > NUM_ACTORS:
        raise ValueError(f"actors {list(actors)} must be a non-empty list of actor numbers in 1-{NUM_ACTORS}")
    return chosen


def _read_json(path: Path) -> dict | None:
    """The marker's content; ``{}`` when it exists but is unreadable, None when it does not exist."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def synthesize_corpus(
    out_dir: str | Path,
    actors: int | Sequence[int] = 24,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write a RAVDESS-format speech corpus to ``out_dir`` and return ``out_dir``.

    Args:
        out_dir: where ``Actor_XX/03-01-EE-II-SS-RR-XX.wav`` go (60 clips per actor, 48 kHz,
            16-bit PCM, mono); created if missing.
        actors: ``N`` for actors 1..N, or a sequence of actor numbers (1-24).
        seed: the same seed gives the same bytes.
        progress: show a progress bar.
        workers: processes to synthesise in (default: one per CPU); 1 works in this process.

    A complete corpus is marked by ``out_dir/.ser-synth.json`` (actors, seed, version); a call
    that finds its own parameters there and every file present returns at once. An interrupted
    call resumes, making only the missing files. A corpus made with other parameters is replaced.

    Raises:
        ValueError: ``actors`` names no actor in 1-24, or ``seed`` is negative.
        FileExistsError: ``out_dir`` holds wav files that this function did not write (a real
            RAVDESS, say), which it will not overwrite.
    """
    out_dir = Path(out_dir)
    if int(seed) < 0:
        raise ValueError(f"seed={seed} is negative; pass a seed >= 0")
    params = {"actors": _actor_list(actors), "seed": int(seed), "version": VERSION}
    clips = corpus_clips(params["actors"])
    paths = [clip_path(out_dir, clip) for clip in clips]
    marker, partial = out_dir / MARKER, out_dir / _PARTIAL
    if _read_json(marker) == params and all(path.is_file() for path in paths):
        return out_dir

    previous = _read_json(marker)
    if previous is None:
        previous = _read_json(partial)
    present = sorted(out_dir.glob("Actor_*/*.wav"))
    if previous is None and present:
        raise FileExistsError(
            f"{out_dir} already holds wav files not written by synthesize_corpus; choose an empty or new directory"
        )
    marker.unlink(missing_ok=True)
    if previous != params:
        # Files made with other parameters must go before the directory is claimed for these
        # ones, or an interrupted run would leave them looking like ours.
        for path in present:
            path.unlink()
    write_json(partial, params)

    for folder in (path for path in out_dir.glob("Actor_*") if path.is_dir()):
        for leftover in folder.glob(".*.tmp*"):  # from an interrupted run
            leftover.unlink(missing_ok=True)
        if not any(folder.iterdir()):  # an actor of other parameters
            folder.rmdir()
    for folder in {path.parent for path in paths}:
        folder.mkdir(parents=True, exist_ok=True)
    tasks = [(str(path), clip, int(seed)) for clip, path in zip(clips, paths) if not path.is_file()]
    _run(tasks, (os.cpu_count() or 1) if workers is None else workers, progress)

    write_json(marker, params)
    partial.unlink(missing_ok=True)
    return out_dir


def synthesize_unless_present(
    root: str | Path, actors: int | Sequence[int] = 24, seed: int = 0, progress: bool = True
) -> Path:
    """Synthesise a corpus at ``root`` (see :func:`synthesize_corpus`) unless another corpus is there.

    ``data.synthesize_actors`` asks for a synthetic corpus where there is none; a folder that
    already holds one (actor folders, audio files, the archive) that this module did not write is
    used as it is, and one log line says so.
    """
    root = Path(root).expanduser()
    made_here = (root / MARKER).is_file() or (root / _PARTIAL).is_file()
    if not made_here and holds_corpus(root):
        log.info("%s already holds a corpus: using it as it is, not synthesising one (data.synthesize_actors)", root)
        return root
    return synthesize_corpus(root, actors=actors, seed=seed, progress=progress)


# Starting a worker (spawn, importing torch) costs about as much as making 100-odd clips.
_PARALLEL_FROM = 128


def _run(tasks: list[tuple[str, ClipName, int]], workers: int, progress: bool) -> None:
    from rich.progress import track

    workers = max(1, min(workers, len(tasks)))
    with tempfile.TemporaryDirectory(prefix="ser-espeak-") as folder:
        library = _copy_library(folder)
        if workers == 1 or len(tasks) < _PARALLEL_FROM:
            previous_threads, previous_library = torch.get_num_threads(), _library_copy
            _init_worker(library)
            try:
                for task in track(tasks, description="Synthesising speech", disable=not progress):
                    _write_clip(task)
            finally:
                torch.set_num_threads(previous_threads)
                _set_library(previous_library)
            return
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        # spawn, not fork: forking a process that has already run torch's thread pools can deadlock.
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(library,)
        ) as pool:
            done = pool.map(_write_clip, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers))))
            for _ in track(done, total=len(tasks), description="Synthesising speech", disable=not progress):
                pass

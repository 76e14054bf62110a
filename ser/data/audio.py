"""Decoding and checking audio, and turning it into what the encoder expects (16 kHz mono float32)."""

from __future__ import annotations

import functools
import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import UserError

SAMPLE_RATE = 16_000  # every wav2vec 2.0 / HuBERT / WavLM checkpoint was pretrained at 16 kHz
# What soundfile (libsndfile >= 1.1) reads: corpora, directories and globs are searched for these.
AUDIO_SUFFIXES = (
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aiff",
    ".aif",
    ".aifc",
    ".au",
    ".caf",
    ".w64",
    ".rf64",
)


class AudioError(UserError, ValueError):
    """A file that cannot be used as audio; the message is the reason."""


def _wav_declared_frames(data: bytes) -> int | None:
    """Frames that a RIFF/WAVE header promises, or None when the file is no plain WAV.

    libsndfile silently shortens a WAV whose data chunk is cut off, so a truncated file
    decodes as a shorter valid clip; comparing against the header is the only way to notice.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"fmt " and pos + 22 <= len(data):
            block_align = int.from_bytes(data[pos + 20 : pos + 22], "little")
        elif chunk_id == b"data":
            if not block_align or size == 0xFFFFFFFF:  # no format yet, or a streamed WAV of unknown length
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an audio file held in memory.

    Returns:
        ``(audio, sample_rate)`` with audio float32 of shape ``(T, C)``.

    Raises:
        AudioError: empty, undecodable or truncated input.
    """
    if not data:
        raise AudioError("empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio_file:
            sample_rate = audio_file.samplerate
            from_pcm16 = audio_file.subtype == "PCM_16"
            if from_pcm16:
                # libsndfile scales each sample by 1/32768 one at a time; numpy gives the same floats
                # several times faster, and 16-bit PCM is what most corpora hold.
                audio = audio_file.read(dtype="int16", always_2d=True) * np.float32(1 / 32768)
            else:
                audio = audio_file.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as error:  # its str() names the in-memory buffer, not the file: keep the reason
        raise AudioError(f"cannot be decoded ({error.error_string})") from None
    except (RuntimeError, TypeError) as error:
        raise AudioError(f"cannot be decoded ({error})") from None
    if len(audio) == 0:
        raise AudioError("no audio frames (header only)")
    declared = _wav_declared_frames(data)
    if declared is not None and len(audio) < declared:
        raise AudioError(f"truncated: the header promises {declared} frames, the file holds {len(audio)}")
    if not from_pcm16 and not np.isfinite(audio).all():
        raise AudioError("contains NaN or infinite samples")
    return audio, sample_rate


def speech_bounds(
    samples: np.ndarray,
    sample_rate: int,
    threshold_db: float = -40.0,
    margin_seconds: float = 0.1,
    above_floor_db: float = 10.0,
) -> tuple[int, int]:
    """Where the speech of ``(T,)`` audio starts and ends, ``margin_seconds`` included: sample indices ``(start, end)``.

    Speech is every 20 ms frame whose energy is no more than ``-threshold_db`` dB below the loudest
    frame's and at least ``above_floor_db`` above the noise floor (the quietest tenth of the frames).
    The floor matters for soft speech: a sad or calm clip can peak less than 40 dB above the room
    noise, and a threshold set from the peak alone then takes the noise for speech and trims nothing,
    while loud clips of the same corpus lose all their silence.
    """
    frame = max(1, int(0.02 * sample_rate))
    usable = len(samples) // frame * frame
    if usable == 0:
        return 0, len(samples)
    energy_db = 10 * np.log10(np.square(samples[:usable].reshape(-1, frame)).mean(axis=1) + 1e-12)
    threshold = max(energy_db.max() + threshold_db, np.percentile(energy_db, 10) + above_floor_db)
    loud = np.flatnonzero(energy_db >= min(threshold, energy_db.max()))
    margin = int(margin_seconds * sample_rate)
    return max(0, loud[0] * frame - margin), min(len(samples), (loud[-1] + 1) * frame + margin)


def trim_silence(
    samples: np.ndarray, sample_rate: int, threshold_db: float = -40.0, margin_seconds: float = 0.1
) -> np.ndarray:
    """``(T,)`` audio without its leading and trailing silence (see :func:`speech_bounds`).

    RAVDESS clips carry about a second of silence around the speech, which costs compute and teaches nothing.
    """
    start, end = speech_bounds(samples, sample_rate, threshold_db, margin_seconds)
    return samples[start:end]


@functools.lru_cache(maxsize=8)
def _resampler(orig_freq: int, new_freq: int):
    import torchaudio.transforms  # imported here so that a warm cache never pays for importing torch

    return torchaudio.transforms.Resample(orig_freq, new_freq)


def resample(samples: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """``torchaudio.functional.resample`` of mono samples ``(T,)`` to ``target_rate``: float32 ``(T',)``.

    The same samples to float rounding, computed faster for many clips. torchaudio's function builds
    its filter on every call, and oneDNN builds a convolution for every new input length, each of
    which takes longer than the convolution itself: here the filter is built once per pair of rates,
    and the input is zero padded to whole seconds (the output there is cut off), in one copy.
    """
    import torch
    import torch.nn.functional as F

    # torchaudio's kernel has target/gcd phases of source/gcd taps each: for a rate co-prime with 16 kHz,
    # such as TESS's 24414 Hz, that is 8000 x 12207 taps. The nearest ratio with a denominator up to 1000
    # is off by a millionth at most, and exact (the same samples) for the usual rates.
    ratio = Fraction(target_rate, sample_rate).limit_denominator(1000)
    orig_freq, new_freq = ratio.denominator, ratio.numerator
    if orig_freq == new_freq:  # within a millionth of the target rate
        return np.array(samples, dtype=np.float32)
    resampler = _resampler(orig_freq, new_freq)
    length = len(samples)
    whole_seconds = -(-length // sample_rate) * sample_rate
    # what torchaudio's _apply_sinc_resample_kernel computes, its padding and ours in one
    padded = F.pad(
        torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None, None],
        (resampler.width, whole_seconds - length + resampler.width + orig_freq),
    )
    phases = F.conv1d(padded, resampler.kernel, stride=orig_freq)  # (1, new_freq, frames)
    kept = int(torch.ceil(torch.as_tensor(new_freq * length / orig_freq)))  # its output length, in float32
    return phases.transpose(1, 2).reshape(-1)[:kept].numpy()


def to_model_input(
    audio: np.ndarray,
    sample_rate: int,
    target_rate: int = SAMPLE_RATE,
    normalize: bool = True,
    trim_db: float | None = None,
) -> np.ndarray:
    """Mix ``(T, C)`` audio to mono, resample to ``target_rate``, optionally trim silence and normalise.

    Normalisation is zero mean and unit variance per clip, exactly as
    ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does for the published checkpoints.

    Returns:
        float32 array of shape ``(T',)``.
    """
    mono = (audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)) if audio.ndim == 2 else audio
    if sample_rate != target_rate:
        mono = resample(mono, sample_rate, target_rate)
    mono = mono.astype(np.float32, copy=False)
    if trim_db is not None:
        mono = trim_silence(mono, target_rate, threshold_db=trim_db)
    if normalize:
        scale = np.sqrt(mono.var() + 1e-7)
        mono = mono - mono.mean()
        mono /= scale  # in place: one copy of a long clip, not two
    return np.ascontiguousarray(mono, dtype=np.float32)


def load(
    path: str | Path, target_rate: int = SAMPLE_RATE, normalize: bool = True, trim_db: float | None = None
) -> np.ndarray:
    """Read any file ``soundfile`` understands as model input ``(T,)`` (see :func:`to_model_input`)."""
    audio, sample_rate = decode(Path(path).read_bytes())
    return to_model_input(audio, sample_rate, target_rate, normalize, trim_db)

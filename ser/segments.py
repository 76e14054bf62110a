"""Emotions over time: the speech of a long recording found by a voice activity detector, each stretch scored.

    from ser import load_model
    from ser.segments import SegmentSettings, segment_files

    model = load_model("model.onnx")
    for s in segment_files(model, ["call.wav"], SegmentSettings(min_silence=0.5, merge=True)):
        print(s.start, s.end, s.label, s.probability) if s.error is None else print(s.path, s.error)

Speech is found by silero-vad (its PyPI wheel ships the model, so nothing is downloaded). Each segment
is then cut from the file at the file's own sample rate and scored exactly as ``ser predict`` scores a
file holding just that stretch (:func:`ser.inference.predict`): mixed to mono, resampled, trimmed,
normalised, and scored in windows when it is longer than one. A segment therefore gets the scores
of the same stretch of audio scored alone.

The recording is read in blocks twice (once for the detector, once for the segments), so memory does
not grow with its length.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .data import audio
from .errors import UserError
from .inference import BATCH_SIZE, as_scorer, expand_paths, progress_bar, score_waveforms, torch_threads, window_bounds
from .scoring import Scorer

VAD_RATE = 16_000  # silero-vad's rate
VAD_FRAME = 512  # samples per detector call at 16 kHz (32 ms): the only frame size silero-vad v5+ takes
BLOCK_SECONDS = 60  # audio read at a time; whole seconds, so that every block resamples to whole samples
# Seconds of speech collected before scoring (and a segment's windows): enough to batch windows of
# similar length, and a bound on memory that does not depend on the recording's length.
GROUP_SECONDS = 120


class SegmentError(UserError):
    """A segmentation setting that cannot be used; the message is one line saying what to do."""


@dataclass(frozen=True)
class SegmentSettings:
    """How speech is found: silero-vad's probability ``threshold``; speech shorter than ``min_speech``
    seconds is dropped; a pause shorter than ``min_silence`` seconds does not end a segment; ``pad``
    seconds are added on either side (never past the middle of the pause to the next segment); with
    ``merge``, neighbouring segments of the same emotion become one row."""

    threshold: float = 0.5
    min_speech: float = 0.25
    min_silence: float = 0.5
    pad: float = 0.1
    merge: bool = False

    def check(self) -> None:
        if not 0 < self.threshold < 1:
            raise SegmentError(f"VAD threshold {self.threshold} is outside (0, 1): give e.g. 0.5")
        for name in ("min_speech", "min_silence", "pad"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise SegmentError(f"--{name.replace('_', '-')} {value} must be a number of seconds, 0 or more")


@dataclass
class Segment:
    """One stretch of speech: ``start`` and ``end`` in seconds from the start of the file.

    ``probabilities`` has every label in the model's order. A row for a file that could not be
    segmented has ``error`` set and no times; a segment the model could not score has ``error`` too.
    """

    path: str
    start: float | None = None
    end: float | None = None
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        """Plain types only, for ``json.dumps``."""
        return asdict(self)


def load_vad() -> Any:
    """silero-vad's JIT model, from the files inside its wheel."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        raise SegmentError(
            'silero-vad is not installed: pip install -e ".[demo]" (or pip install silero-vad)'
        ) from None
    finally:
        torch.set_num_threads(threads)  # importing silero_vad sets one thread for the whole process
    with warnings.catch_warnings():  # its loader's importlib and torch.jit deprecations are not the user's to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad()


def _open(path: str) -> sf.SoundFile:
    try:
        handle = sf.SoundFile(path)
    except sf.LibsndfileError as error:
        raise audio.AudioError(f"cannot be decoded ({error.error_string})") from None
    if handle.frames == 0:
        handle.close()
        raise audio.AudioError("no audio frames (header only)")
    return handle


def _mono_blocks(handle: sf.SoundFile, seconds: int = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """The file from its start as mono float32 blocks ``(T,)`` of ``seconds`` each (the last may be shorter)."""
    handle.seek(0)
    for block in handle.blocks(blocksize=seconds * handle.samplerate, dtype="float32", always_2d=True):
        if not np.isfinite(block).all():
            raise audio.AudioError("contains NaN or infinite samples")
        yield block.mean(axis=1)


def speech_probabilities(handle: sf.SoundFile, vad: Any) -> np.ndarray:
    """silero-vad's speech probability of every 32 ms frame of the file, ``(F,)`` float32.

    The detector is fed frame by frame with its state carried across blocks, which gives what
    ``get_speech_timestamps`` computes on the whole recording without holding the recording in memory.
    """
    import torch
    import torchaudio.functional as AF

    vad.reset_states()
    probabilities = array("f")  # 4 bytes a frame, not a Python float's 32: a day of audio is 2.7 million frames
    carry = np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        for block in _mono_blocks(handle):
            if handle.samplerate != VAD_RATE:
                block = AF.resample(torch.from_numpy(block), handle.samplerate, VAD_RATE).numpy()
            samples = torch.from_numpy(np.concatenate([carry, block]))
            usable = len(samples) // VAD_FRAME * VAD_FRAME
            for start in range(0, usable, VAD_FRAME):
                probabilities.append(vad(samples[start : start + VAD_FRAME], VAD_RATE).item())
            carry = samples[usable:].numpy()
        if len(carry):  # the last part frame, zero-padded as get_speech_timestamps pads it
            last = torch.from_numpy(np.pad(carry, (0, VAD_FRAME - len(carry))))
            probabilities.append(vad(last, VAD_RATE).item())
    return np.frombuffer(probabilities, dtype=np.float32)


def speech_spans(probabilities: np.ndarray, settings: SegmentSettings, duration: float) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of speech from per-frame probabilities ``(F,)``, ``pad`` included.

    The rules are silero-vad's ``get_speech_timestamps``' (speech starts at ``threshold``, and ends
    after ``min_silence`` below ``threshold - 0.15``), written out because that function needs the
    whole recording as one tensor.
    """
    frame = VAD_FRAME / VAD_RATE
    off = max(settings.threshold - 0.15, 0.01)
    spans: list[tuple[int, int]] = []
    start: int | None = None
    quiet_from: int | None = None
    for i, p in enumerate(probabilities):
        if p >= settings.threshold:
            if start is None:
                start = i
            quiet_from = None
        elif start is not None and p < off:
            if quiet_from is None:
                quiet_from = i
            if (i + 1 - quiet_from) * frame >= settings.min_silence:
                spans.append((start, quiet_from))
                start = quiet_from = None
    if start is not None:
        spans.append((start, quiet_from if quiet_from is not None else len(probabilities)))
    seconds = [(a * frame, min(b * frame, duration)) for a, b in spans if (b - a) * frame >= settings.min_speech]
    padded = []
    for i, (a, b) in enumerate(seconds):
        lo = max(0.0, a - settings.pad) if i == 0 else max(a - settings.pad, (seconds[i - 1][1] + a) / 2)
        hi = (
            min(duration, b + settings.pad)
            if i == len(seconds) - 1
            else min(b + settings.pad, (b + seconds[i + 1][0]) / 2)
        )
        padded.append((lo, hi))
    return padded


def _score_segments(
    scorer: Scorer,
    handle: sf.SoundFile,
    path: str,
    spans: Sequence[tuple[int, int]],
    window: int,
    hop: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> list[Segment]:
    """Score the stretches ``spans`` (file samples ``[start, stop)``) of an open file, a group of windows at a time."""
    rate = handle.samplerate
    segments = [Segment(path=path, start=a / rate, end=b / rate) for a, b in spans]
    pieces: list[np.ndarray] = []
    owners: list[int] = []
    grouped = 0  # samples of the segments whose windows are in pieces

    def flush() -> None:
        probabilities, errors = score_waveforms(scorer, pieces, batch_size, on_batch)
        rows_of: dict[int, list[int]] = {}
        for j, owner in enumerate(owners):
            rows_of.setdefault(owner, []).append(j)
        for i, rows in rows_of.items():
            _fill(segments[i], scorer.labels, probabilities[rows], [errors[j] for j in rows])
        pieces.clear()
        owners.clear()

    for i, (a, b) in enumerate(spans):
        handle.seek(a)
        samples = handle.read(b - a, dtype="float32", always_2d=True)
        waveform = audio.to_model_input(samples, rate, scorer.sample_rate, scorer.normalize, trim_db=scorer.trim_db)
        for lo, hi in window_bounds(len(waveform), window, hop):
            pieces.append(waveform[lo:hi])
            owners.append(i)
        grouped += len(waveform)
        if grouped >= GROUP_SECONDS * scorer.sample_rate:
            flush()
            grouped = 0
    if pieces:
        flush()
    return segments


def _fill(segment: Segment, labels: Sequence[str], window_probabilities: np.ndarray, errors: list[str | None]) -> None:
    """A segment's scores: the mean of its windows' probabilities (W, C), as ``ser predict`` averages them."""
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        segment.error = failed
        return
    mean = window_probabilities.astype(np.float64).mean(axis=0)
    best = int(mean.argmax())
    segment.label, segment.probability = labels[best], float(mean[best])
    segment.probabilities = {label: float(p) for label, p in zip(labels, mean)}


def merge_neighbours(segments: Sequence[Segment], labels: Sequence[str]) -> list[Segment]:
    """Consecutive segments of one file with the same emotion as one row, from the first start to the last end.

    A merged row's probabilities are its parts' weighted by their durations, so it still sums to 1.
    """
    merged: list[Segment] = []
    run: list[Segment] = []

    def close() -> None:
        if len(run) == 1:
            merged.append(run[0])
        elif run:
            weights = np.array([s.end - s.start for s in run])
            mean = np.array([list(s.probabilities.values()) for s in run]).T @ (weights / weights.sum())
            best = int(mean.argmax())
            merged.append(
                Segment(
                    path=run[0].path,
                    start=run[0].start,
                    end=run[-1].end,
                    label=labels[best],
                    probability=float(mean[best]),
                    probabilities={label: float(p) for label, p in zip(labels, mean)},
                )
            )
        run.clear()

    for segment in segments:
        same = run and segment.error is None and run[-1].error is None and segment.path == run[-1].path
        if not (same and segment.label == run[-1].label):
            close()
        run.append(segment)
    close()
    return merged


def segment_file(
    scorer: Scorer,
    path: str,
    settings: SegmentSettings,
    vad: Any,
    window_seconds: float = 10.0,
    hop_seconds: float = 5.0,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> list[Segment]:
    """The scored speech segments of one file; raises AudioError or OSError when it cannot be read."""
    with _open(path) as handle:
        duration = handle.frames / handle.samplerate
        spans = speech_spans(speech_probabilities(handle, vad), settings, duration)
        rate = handle.samplerate
        samples = [(round(a * rate), min(handle.frames, round(b * rate))) for a, b in spans]
        samples = [(a, b) for a, b in samples if b > a]
        window = max(1, round(window_seconds * scorer.sample_rate))
        hop = max(1, round(hop_seconds * scorer.sample_rate))
        segments = _score_segments(scorer, handle, path, samples, window, hop, batch_size, on_batch)
    return merge_neighbours(segments, scorer.labels) if settings.merge else segments


def segment_files(
    model: Scorer | str | Path | Any,
    paths: Sequence[str | Path] | str | Path,
    settings: SegmentSettings | None = None,
    window_seconds: float = 10.0,
    hop_seconds: float = 5.0,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
    threads: int | None = None,
) -> Iterator[Segment]:
    """The speech segments of every audio file in ``paths`` (as :func:`ser.inference.predict` takes them), in order.

    Rows come file by file as each is done. A file that cannot be read, or holds no speech, gives one
    row with ``error`` saying why; the others are segmented all the same. ``threads``: torch's threads
    (default: the idle cores, see :func:`ser.inference.torch_threads`).
    """
    settings = settings or SegmentSettings()
    settings.check()
    if not window_seconds > 0 or not 0 < hop_seconds <= window_seconds:
        raise SegmentError(f"window {window_seconds} s and hop {hop_seconds} s: give 0 < hop <= window")
    scorer = as_scorer(model)
    vad = load_vad()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    entries = expand_paths(paths)
    with progress_bar(progress) as bar, scorer.inference(), torch_threads(threads):
        task = bar.add_task("Segmenting", total=len(entries)) if bar is not None else None
        for path, reason in entries:
            if reason is not None:
                yield Segment(path=path, error=reason)
                if bar is not None:
                    bar.advance(task)
                continue
            try:
                segments = segment_file(scorer, path, settings, vad, window_seconds, hop_seconds, batch_size)
            except audio.AudioError as error:
                segments = [Segment(path=path, error=str(error))]
            except OSError as error:
                segments = [Segment(path=path, error=f"cannot be read ({error.strerror or error})")]
            if not segments:
                segments = [Segment(path=path, error="no speech found (try a lower --min-speech)")]
            yield from segments
            if bar is not None:
                bar.advance(task)


# --- output -----------------------------------------------------------------------------------

CSV_FIELDS = ("file", "start", "end", "emotion", "probability")


def csv_header(labels: Sequence[str]) -> str:
    return _csv_line([*CSV_FIELDS, *labels, "error"])


def csv_row(segment: Segment, labels: Sequence[str]) -> str:
    """One CSV line: file, start, end, emotion, probability, each label's probability, error."""

    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    cells = [segment.path, number(segment.start, 3), number(segment.end, 3), segment.label or ""]
    cells.append(number(segment.probability, 6))
    cells += [number(segment.probabilities.get(label), 6) for label in labels]
    return _csv_line([*cells, segment.error or ""])


def _csv_line(cells: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def timeline_rows(segments: Sequence[Segment], labels: Sequence[str]) -> list[list]:
    """Rows ``[start, end, emotion, probability, *label probabilities]`` of the scored segments (a table's body)."""
    return [
        [round(s.start, 3), round(s.end, 3), s.label, s.probability] + [s.probabilities[label] for label in labels]
        for s in segments
        if s.error is None
    ]


def plot_timeline(segments: Sequence[Segment], labels: Sequence[str], title: str | None = None):
    """Emotions against time: one bar per segment on its emotion's row, shaded by its probability, and
    every label's probability as a line over the segment. Returns a matplotlib figure."""
    import matplotlib.pyplot as plt

    from . import plots  # noqa: F401 - selects the headless backend

    scored = [s for s in segments if s.error is None]
    colours = plt.get_cmap("tab10")
    figure, (bars, lines) = plt.subplots(2, 1, figsize=(11, 5), sharex=True, height_ratios=(1.2, 1))
    for s in scored:
        row = labels.index(s.label)
        bars.barh(row, s.end - s.start, left=s.start, color=colours(row % 10), alpha=0.35 + 0.65 * s.probability)
    bars.set_yticks(range(len(labels)), labels)
    bars.set_ylim(-0.5, len(labels) - 0.5)
    bars.grid(axis="x", alpha=0.3)
    bars.set_title(title or "emotion of each speech segment", fontsize=10)
    for k, label in enumerate(labels):
        xs, ys = [], []
        for s in scored:
            xs += [s.start, s.end, math.nan]
            ys += [s.probabilities[label]] * 2 + [math.nan]
        lines.plot(xs, ys, color=colours(k % 10), label=label)
    lines.set(ylim=(0, 1), xlabel="time (s)", ylabel="probability")
    lines.grid(alpha=0.3)
    lines.legend(ncol=min(len(labels), 8), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    figure.tight_layout()
    return figure


__all__ = [
    "Segment",
    "SegmentError",
    "SegmentSettings",
    "csv_header",
    "csv_row",
    "load_vad",
    "merge_neighbours",
    "plot_timeline",
    "segment_file",
    "segment_files",
    "speech_spans",
    "timeline_rows",
]

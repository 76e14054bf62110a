"""Emotions of audio files from a trained model: the Python side of ``ser predict``.

    from ser import load_model, predict

    model = load_model("outputs/.../checkpoints/best.ckpt")   # or model.onnx, or a Hugging Face model
    for p in predict(model, ["clips/", "more/*.flac", "one.wav"]):
        print(p.path, p.label, p.probability) if p.error is None else print(p.path, p.error)

A model is a :class:`~ser.scoring.Scorer`: a checkpoint (:class:`CheckpointClassifier`), a Hugging
Face model (:class:`ser.hub.HFClassifier`) or an ONNX export (:class:`ser.onnx_runtime.OnnxClassifier`).
It says what its inputs must be (``sample_rate``, ``normalize``, ``trim_db``), what its outputs mean
(``labels``) and whether it takes an attention mask. Files are decoded, mixed to mono, resampled,
trimmed of silence and normalised exactly as the training cache does (:mod:`ser.data.audio`), so a
clip gets the scores it would get in evaluation.

Clips longer than a window are scored in overlapping windows whose probabilities are averaged; the
windows are cut from the clip after it is normalised as a whole, as training crops were cut from
normalised clips.

Batching never changes a clip's scores: items are grouped by length so that little padding is
needed, padding is masked, and a model that cannot be given a mask (an encoder with a group-norm
feature encoder: it sees zero padding as signal) is only given batches of equal-length items.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import audio
from .data.audio import AUDIO_SUFFIXES
from .data.batching import pad_batch
from .errors import UserError, first_line
from .scoring import Scorer, evaluating, module_device, module_logits

# Files decoded and scored at a time: bounds memory on large directories, and is still enough
# clips for batches of similar lengths.
FILES_PER_CHUNK = 128
# The first group is this small, and each next one twice the last, up to FILES_PER_CHUNK: the model
# waits only for a few files to be read before it starts, and from then on threads read ahead.
FIRST_CHUNK = 16
# Clips or windows per forward pass: a pass has a fixed cost in Python and in launching kernels,
# which a small model pays more often than it computes; past about this size a larger batch gains
# nothing on a CPU (BENCHMARKS.md, predict) and only holds more memory.
BATCH_SIZE = 16
# Seconds of padded audio per forward pass at most, whatever BATCH_SIZE says: bounds memory when the
# inputs are long windows (the first convolution of a wav2vec 2.0 encoder holds 512 channels for
# every 5 samples, so 40 s of audio in float32 is about 250 MiB there).
BATCH_SECONDS = 40.0
# A batch is padded to a multiple of this many seconds: oneDNN builds its convolutions for each new
# input shape, which takes longer than a small model's forward pass, and with lengths on a grid it
# reuses them. Only models that take an attention mask are padded, for which padding changes nothing.
PAD_SECONDS = 0.2


class PredictError(UserError):
    """A model or an option that prediction cannot use; the message is one line saying what to do."""


class CheckpointClassifier:
    """A model trained by this project (a ``SERModule``, e.g. from a ``.ckpt``) as a :class:`Scorer`.

    What its inputs must be comes from the module's hyperparameters, which training sets from the
    data config. It takes the attention mask: its classifier encodes the clips of a group-norm
    encoder at their true lengths itself. ``module`` is the wrapped ``SERModule``; its CNN feature
    encoder computes channels-last when it runs without autograd on a CPU
    (:func:`ser.models.encoder.use_channels_last_features`).
    """

    uses_attention_mask = True

    def __init__(self, module: Any, name: str | None = None):
        from .models.encoder import receptive_field, use_channels_last_features

        hparams = module.hparams
        self.module = module
        self.name = name or type(module).__name__
        self.labels = [str(label) for label in hparams["labels"]]
        self.sample_rate = int(hparams.get("sample_rate", audio.SAMPLE_RATE))
        self.normalize = bool(hparams.get("normalize", True))
        trim_db = hparams.get("trim_db")  # absent from checkpoints older than silence trimming
        self.trim_db = None if trim_db is None else float(trim_db)
        self.min_samples = receptive_field(module.model.encoder.config)
        use_channels_last_features(module.model.encoder)  # the same scores, computed faster on a CPU

    def logits(self, waveforms: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) float32 on the CPU, the inputs moved to the module's device."""
        return module_logits(self.module, waveforms, attention_mask)

    def inference(self) -> contextlib.AbstractContextManager[None]:
        """Eval mode and ``torch.inference_mode`` for the duration; the module's mode is restored after."""
        return evaluating(self.module)

    def __repr__(self) -> str:
        return (
            f"CheckpointClassifier({self.name!r}, {len(self.labels)} labels, {self.sample_rate} Hz, "
            f"normalize={self.normalize}, trim_db={self.trim_db})"
        )


def as_scorer(model: Any) -> Scorer:
    """A :class:`Scorer` for MODEL: a Scorer itself, a ``SERModule``, or a path or name (see :func:`load_model`)."""
    if isinstance(model, (str, Path)):
        return load_model(model)
    if isinstance(model, Scorer):
        return model
    hparams = getattr(model, "hparams", None)
    if hparams is not None and "labels" in hparams:  # SERModule
        return CheckpointClassifier(model)
    raise PredictError(
        f"cannot score with a {type(model).__name__}: give a SERModule, a Scorer, "
        "or a path to a .ckpt, .onnx or Hugging Face model"
    )


def _checkpoint_name(path: Path) -> str:
    """``<run>-best`` for ``<run>/checkpoints/best.ckpt`` (every run's best is called best), else the stem."""
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}-{path.stem}"
    return path.stem


def load_model(model: str | Path, device: str | torch.device | None = None) -> Scorer:
    """A :class:`Scorer` for MODEL, in eval mode.

    MODEL is a Lightning checkpoint of this project (``.ckpt``), an ONNX export (a ``.onnx`` file, or
    a folder holding ``model.onnx``, from ``ser export --format onnx``), or a Hugging Face
    audio-classification model: a directory written by ``save_pretrained`` or a Hub name. ``device``
    (e.g. ``"cuda"``) moves a torch model there; an ONNX model runs where onnxruntime puts it (CUDA
    when its GPU build is installed).
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".ckpt":
        if not path.is_file():
            raise PredictError(
                f"checkpoint {text} does not exist: give the path of a .ckpt file, e.g. <run>/checkpoints/best.ckpt"
            )
        from .module import SERModule

        try:
            # weights_only: loading runs no code from the file; this project's checkpoints hold only
            # tensors and plain data (the module's arguments), so they load this way.
            module = SERModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and key errors alike: a file that is not our checkpoint
            raise PredictError(
                f"cannot load checkpoint {text} ({first_line(error)}): give a checkpoint written by `python train.py`"
            ) from None
        module.eval()
        if device is not None:
            module.to(device)
        return CheckpointClassifier(module, name=_checkpoint_name(path))
    # imported here, not above: transformers loads only when a model is loaded
    from .onnx_runtime import OnnxClassifier, onnx_file

    onnx = onnx_file(path)
    if onnx is not None:
        if not onnx.is_file():
            raise PredictError(
                f"ONNX model {text} does not exist: write one with `ser export CKPT OUT.onnx --format onnx`"
            )
        return OnnxClassifier(onnx)
    if path.is_file():
        raise PredictError(f"{text} is neither a .ckpt checkpoint, an .onnx file nor a Hugging Face model directory")
    from .hub import load_hf_classifier

    # a one-line EncoderError when it is neither a local directory nor a Hub name that can be loaded
    classifier = load_hf_classifier(str(path) if path.is_dir() else text)
    classifier.eval()
    if device is not None:
        classifier.to(device)
    return classifier


# --- scoring waveforms ------------------------------------------------------------------------


def plan_batches(
    lengths: Sequence[int], batch_size: int, equal_lengths: bool, max_samples: int | None = None
) -> list[np.ndarray]:
    """Item indices per batch, longest items first (a memory problem shows at once).

    Items are sorted by length so that batches need little padding; with ``equal_lengths`` a batch
    only holds items of one length (for models that must not see padding). A batch holds at most
    ``batch_size`` items and, when ``max_samples`` is given, at most that many samples once padded
    (an item longer than that is a batch of its own).
    """
    if batch_size < 1:
        raise PredictError(f"batch size is {batch_size}: give at least 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, current = [], []
    for index in order:
        if current:
            longest = lengths[current[0]]  # sorted longest first
            too_long = max_samples is not None and longest * (len(current) + 1) > max_samples
            if len(current) == batch_size or too_long or (equal_lengths and lengths[index] != longest):
                batches.append(np.array(current))
                current = []
        current.append(int(index))
    if current:
        batches.append(np.array(current))
    return batches


def _score_batch(scorer: Scorer, waveforms: Sequence[np.ndarray]) -> Tensor:
    # without a mask the batch holds clips of one length, and padding would change their scores
    grid = max(1, round(PAD_SECONDS * scorer.sample_rate)) if scorer.uses_attention_mask else 1
    batch, mask = pad_batch(waveforms, multiple=grid)
    logits = scorer.logits(batch, mask if scorer.uses_attention_mask else None)
    if logits.shape != (len(waveforms), len(scorer.labels)):
        raise RuntimeError(
            f"the model gave logits of shape {tuple(logits.shape)} for {len(waveforms)} clips "
            f"and {len(scorer.labels)} labels"
        )
    return logits.softmax(dim=-1)


def score_waveforms(
    scorer: Scorer,
    waveforms: Sequence[np.ndarray],
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, list[str | None]]:
    """Class probabilities of model-ready waveforms (each ``(T_i,)`` float32), batched by length.

    Returns ``(probabilities (N, C) float32, errors)``: ``errors[i]`` is None, or why item i could not
    be scored (too short, or the model failed on it alone); its row is then NaN. A batch holds at most
    ``batch_size`` items and :data:`BATCH_SECONDS` of padded audio. ``workers`` batches are scored at
    once, each on a thread of its own with one torch thread (see :func:`batch_workers`); a single batch
    keeps the caller's torch threads. ``on_batch(n)`` is called after every batch of n items (progress
    bars). Call inside :meth:`Scorer.inference`.
    """
    probabilities = np.full((len(waveforms), len(scorer.labels)), np.nan, dtype=np.float32)
    errors: list[str | None] = [None] * len(waveforms)
    lengths = [len(w) for w in waveforms]
    for i, length in enumerate(lengths):
        if length < scorer.min_samples:
            errors[i] = (
                f"too short: {length / scorer.sample_rate:.3f} s, "
                f"the model needs at least {scorer.min_samples / scorer.sample_rate:.3f} s"
            )
    usable = [i for i in range(len(waveforms)) if errors[i] is None]
    batches = plan_batches(
        [lengths[i] for i in usable],
        batch_size,
        equal_lengths=not scorer.uses_attention_mask,
        max_samples=round(BATCH_SECONDS * scorer.sample_rate),
    )

    def score(batch: np.ndarray) -> int:
        items = [usable[j] for j in batch]
        # inference mode belongs to a thread: a worker thread enters it itself
        with scorer.inference():
            try:
                probabilities[items] = _score_batch(scorer, [waveforms[i] for i in items]).numpy()
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - torch, transformers and onnxruntime each raise their own kinds
                # One bad item must not cost the others their scores: find it by scoring each alone.
                for i in items:
                    try:
                        probabilities[i] = _score_batch(scorer, [waveforms[i]]).numpy()[0]
                    except torch.OutOfMemoryError:
                        raise
                    except Exception as alone:  # noqa: BLE001
                        errors[i] = f"the model failed on it: {first_line(alone if len(items) > 1 else error)}"
        return len(items)

    with contextlib.ExitStack() as stack:
        if workers > 1 and len(batches) > 1:
            stack.enter_context(torch_threads(1))
            # map cancels the batches not yet started when one raises (Ctrl-C, out of memory)
            scored = stack.enter_context(ThreadPoolExecutor(max_workers=workers)).map(score, batches)
        else:
            scored = map(score, batches)
        for count in scored:  # in the calling thread, in order: progress bars need no locks
            if on_batch is not None:
                on_batch(count)
    return probabilities, errors


def batch_workers(scorer: Scorer, cores: int) -> int:
    """How many batches to score at once on ``cores`` cores: one per core for a torch model on a CPU,
    each on one torch thread; else 1, on every core.

    A small model's forward pass is a long run of short operations, and torch's threads wait for each
    other at the end of every one: whole batches side by side keep every core busy instead. The
    scores are the same to float rounding. onnxruntime and GPUs parallelise a batch well themselves.
    """
    module = scorer.module if isinstance(scorer, CheckpointClassifier) else scorer
    if cores > 1 and isinstance(module, torch.nn.Module) and module_device(module).type == "cpu":
        return cores
    return 1


# --- threads -------------------------------------------------------------------------------------


def idle_cores() -> int:
    """The CPU cores this process may use less those other processes keep busy (the 1-minute load
    average, rounded down), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy = math.floor(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this platform
        return cores
    return max(1, min(cores, cores - busy))


@contextlib.contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` for the duration, and restored after; yields the count.

    ``None`` takes the cores that are idle (:func:`idle_cores`), never more than torch would use anyway
    (``OMP_NUM_THREADS`` or ``torch.set_num_threads`` set that). Threads that wait for a core another
    process holds make every parallel op wait for them, so on a busy machine fewer threads finish sooner
    (BENCHMARKS.md, predict).
    """
    previous = torch.get_num_threads()
    if threads is not None and threads < 1:
        raise PredictError(f"--threads {threads}: give at least 1")
    wanted = threads if threads is not None else min(previous, idle_cores())
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(previous)


# --- predicting files -------------------------------------------------------------------------


@dataclass
class Prediction:
    """The emotion of one file.

    ``probabilities`` has every label (in the model's order) and sums to 1; ``windows`` holds the
    probabilities of each window (one entry when the clip fits in one window), and
    ``probabilities`` is their mean. ``duration`` is in seconds. When the file could not be scored,
    ``error`` says why and ``label``/``probability`` are None.
    """

    path: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    windows: list[dict[str, float]] = field(default_factory=list)
    duration: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        """Plain types only, for ``json.dumps``."""
        return asdict(self)


def expand_paths(paths: Sequence[str | Path]) -> list[tuple[str, str | None]]:
    """Files to score, in the order given: ``(path, None)``, or ``(path, reason)`` for a PATH that gives none.

    A file is taken as it is (any suffix); a directory is searched recursively, and a glob (``*``,
    ``?``, ``[...]``, ``**``) expanded, for audio files (:data:`AUDIO_SUFFIXES`), hidden ones skipped.
    A file named twice is scored once.
    """
    found: list[tuple[str, str | None]] = []
    seen: set[Path] = set()

    def add(path: Path, reason: str | None = None) -> None:
        key = path.resolve() if reason is None else path
        if key not in seen:
            seen.add(key)
            found.append((str(path), reason))

    def audio_files(matches) -> list[Path]:
        return sorted(
            p for p in matches if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")
        )

    for given in paths:
        text = str(given)
        path = Path(text).expanduser()
        if path.is_dir():
            files = audio_files(
                p for p in path.rglob("*") if not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                add(path, f"no audio files ({', '.join(AUDIO_SUFFIXES[:3])}, ...) in this directory")
            for file in files:
                add(file)
        elif path.exists():
            add(path)
        elif glob.has_magic(text):
            matches = [Path(m) for m in glob.glob(str(path), recursive=True)]
            files = audio_files(
                f
                for m in matches
                for f in ([m] if not m.is_dir() else [p for p in m.rglob("*") if not p.name.startswith(".")])
            )
            if not files:
                add(path, "matches no audio file")
            for file in files:
                add(file)
        else:
            add(path, "no such file or directory")
    return found


def window_bounds(length: int, window: int, hop: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the windows covering ``length`` samples.

    A clip that fits in one window is one window. A longer one gets windows of exactly ``window``
    samples (a group-norm model can then batch them), the first at the start, the last at the end,
    and as few between as keep starts at most ``hop`` apart, spread evenly: every part of the clip
    weighs about the same in the average (``hop`` exactly when it divides ``length - window``).
    """
    if length <= window:
        return [(0, length)]
    count = math.ceil((length - window) / hop) + 1
    starts = np.linspace(0, length - window, count).round().astype(int)
    return [(int(start), int(start) + window) for start in starts]


def _read(path: str, scorer: Scorer) -> tuple[np.ndarray, float]:
    """Model input ``(T,)`` and the duration in seconds; raises AudioError or OSError."""
    samples, rate = audio.decode(Path(path).read_bytes())
    waveform = audio.to_model_input(samples, rate, scorer.sample_rate, scorer.normalize, trim_db=scorer.trim_db)
    return waveform, len(samples) / rate


def _try_read(path: str, scorer: Scorer) -> tuple[np.ndarray, float] | str:
    """:func:`_read`'s result, or why the file cannot be read."""
    try:
        return _read(path, scorer)
    except audio.AudioError as error:
        return str(error)
    except OSError as error:
        return f"cannot be read ({error.strerror or first_line(error)})"


def predict(
    model: Scorer | str | Path | Any,
    paths: Sequence[str | Path] | str | Path,
    window_seconds: float = 10.0,
    hop_seconds: float = 5.0,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
    threads: int | None = None,
) -> list[Prediction]:
    """Predict the emotion of every audio file in ``paths``: one :class:`Prediction` per file, in order.

    ``model``: a :class:`Scorer`, a ``SERModule`` (e.g. from ``load_from_checkpoint``), or what
    :func:`load_model` accepts. ``paths``: files, directories (searched recursively) and globs; any
    format, sample rate and channel count soundfile reads. Clips longer than ``window_seconds`` are
    scored in windows every ``hop_seconds`` and their probabilities averaged. A file that cannot be
    read or scored gets a Prediction with ``error`` set; the others are scored all the same.
    ``threads``: the cores to score on (batches side by side, see :func:`batch_workers`, or torch's
    threads) and the threads reading files (default: the idle cores, see :func:`torch_threads`).
    """
    return list(iter_predict(model, paths, window_seconds, hop_seconds, batch_size, progress, threads))


def iter_predict(
    model: Scorer | str | Path | Any,
    paths: Sequence[str | Path] | str | Path,
    window_seconds: float = 10.0,
    hop_seconds: float = 5.0,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
    threads: int | None = None,
) -> Iterator[Prediction]:
    """:func:`predict`, yielding each file's Prediction once its group of files (at most ``FILES_PER_CHUNK``) is scored.

    Memory stays flat however many files there are, and a caller that writes results as they come
    keeps them all when a later file crashes the run. While one group is scored, threads read the
    next one.
    """
    scorer = as_scorer(model)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not window_seconds > 0 or not hop_seconds > 0:
        raise PredictError(f"window {window_seconds} s and hop {hop_seconds} s must both be positive")
    if hop_seconds > window_seconds:
        raise PredictError(
            f"hop {hop_seconds} s is longer than the window {window_seconds} s: audio between windows would be skipped"
        )
    if threads is not None and threads < 1:
        raise PredictError(f"--threads {threads}: give at least 1")
    window = max(1, round(window_seconds * scorer.sample_rate))
    hop = max(1, round(hop_seconds * scorer.sample_rate))
    entries = expand_paths(paths)
    chunks, start, size = [], 0, min(FIRST_CHUNK, FILES_PER_CHUNK)
    while start < len(entries):
        chunks.append(entries[start : start + size])
        start, size = start + size, min(2 * size, FILES_PER_CHUNK)
    cores = threads or min(torch.get_num_threads(), idle_cores())
    workers = batch_workers(scorer, cores)

    def read_ahead(chunk: list[tuple[str, str | None]]) -> list[Future | str]:
        # Decoding and resampling release the GIL, so these threads read while the model scores.
        return [readers.submit(_try_read, path, scorer) if reason is None else reason for path, reason in chunk]

    with progress_bar(progress) as bar, ThreadPoolExecutor(max_workers=cores) as readers:
        task = bar.add_task("Scoring", total=0) if bar is not None else None
        reading = read_ahead(chunks[0]) if chunks else []
        for number, chunk in enumerate(chunks):
            reads = [read if isinstance(read, str) else read.result() for read in reading]
            reading = read_ahead(chunks[number + 1]) if number + 1 < len(chunks) else []
            predictions = [Prediction(path=path) for path, _ in chunk]
            pieces: list[np.ndarray] = []  # windows: views into the clips, not copies
            owners: list[int] = []  # which prediction each window belongs to
            for i, read in enumerate(reads):
                if isinstance(read, str):
                    predictions[i].error = read
                    continue
                waveform, predictions[i].duration = read
                for lo, hi in window_bounds(len(waveform), window, hop):
                    pieces.append(waveform[lo:hi])
                    owners.append(i)
            if bar is not None:
                bar.update(task, total=bar.tasks[task].total + len(pieces))
            on_batch = (lambda n: bar.advance(task, n)) if bar is not None else None
            with scorer.inference(), torch_threads(cores):
                probabilities, errors = score_waveforms(scorer, pieces, batch_size, on_batch, workers)
            rows_of: dict[int, list[int]] = {}
            for j, owner in enumerate(owners):
                rows_of.setdefault(owner, []).append(j)
            for i, rows in rows_of.items():
                _fill(predictions[i], scorer.labels, probabilities[rows], [errors[j] for j in rows])
            yield from predictions


def _fill(
    prediction: Prediction, labels: Sequence[str], window_probabilities: np.ndarray, errors: list[str | None]
) -> None:
    """Set a prediction from its windows' probabilities (W, C), or its error if a window failed."""
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        prediction.error = failed
        return
    mean = window_probabilities.astype(np.float64).mean(axis=0)
    best = int(mean.argmax())
    prediction.label = labels[best]
    prediction.probability = float(mean[best])
    prediction.probabilities = {label: float(p) for label, p in zip(labels, mean)}
    prediction.windows = [{label: float(p) for label, p in zip(labels, row)} for row in window_probabilities]


@contextlib.contextmanager
def progress_bar(enabled: bool):
    """A rich progress bar on stderr (stdout may carry JSON lines), or None."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        # On a terminal rich would take sys.stdout over and print it on stderr above the bar, so that
        # results written while the bar shows (JSON lines, CSV rows) would miss a redirected stdout.
        redirect_stdout=False,
        redirect_stderr=False,
    ) as bar:
        yield bar


__all__ = [
    "AUDIO_SUFFIXES",
    "CheckpointClassifier",
    "Prediction",
    "PredictError",
    "Scorer",
    "as_scorer",
    "batch_workers",
    "expand_paths",
    "idle_cores",
    "iter_predict",
    "load_model",
    "plan_batches",
    "predict",
    "progress_bar",
    "score_waveforms",
    "torch_threads",
    "window_bounds",
]

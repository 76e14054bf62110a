"""Benchmark prediction: ``ser predict`` against ``transformers.pipeline("audio-classification")``, in one run.

    python benchmarks/predict.py [--encoder-config tiny|base|large] [--checkpoint CKPT] [--files N]
                                 [--repeats R] [--device DEVICE] [--quick] [--output FILE]

Both sides score the same files with the same model: a checkpoint (``--checkpoint``, or by default the
demo's encoder trained for a few steps by ``ser.train`` on a synthetic corpus) exported with
``ser.export.export_hf``; each side loads that exported directory.

- ``ser predict``: ``ser.inference.load_model`` and ``predict(model, paths)``, which decodes, resamples and
  normalises every file and scores the clips in batches of similar length.
- ``pipeline()``: every file decoded with soundfile (the pipeline itself would need ffmpeg for a path) and
  handed over as ``{"raw": samples, "sampling_rate": rate}``; the pipeline resamples, normalises and scores.
  At its default batch size (1) and at ``ser predict``'s (8).
- two settings ``ser predict`` does not use by default, to see what they would give: batches of 32
  (``--batch-size 32``), and torch's oneDNN convolutions switched off.

A side's time runs from the list of paths to every file's probabilities, decoding included; loading the
model is timed apart. The files are N synthetic RAVDESS-format clips (48 kHz WAV, so every side resamples).
After a warm-up on a few files, the sides take turns, ``--repeats`` times each; the median time counts.
The labels of the two sides are compared file by file. A last pass of ``ser predict`` and of
``pipeline()`` under cProfile says which of their stages (decoding, preprocessing, the model) takes the time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from report import BENCHMARKS_MD, ENCODER_CONFIGS, command_line, use_encoder, write_section

BATCH_SIZE = 8  # ser predict's default
LARGE_BATCH_SIZE = 32
WARM_UP_FILES = 8
CHECKPOINT_STEPS = 20  # a trained model, for predictions that mean something; the speed does not depend on it
# The stages of each side timed under cProfile: (the end of the file's path, the function)
STAGES = {
    "ser predict": {
        "reading: decode, resample, normalise (`ser.inference._read`)": ("ser/inference.py", "_read"),
        "the model, in batches of similar length (`score_waveforms`)": ("ser/inference.py", "score_waveforms"),
    },
    "pipeline(), batch 1": {
        "reading: decode (soundfile, in this script)": ("benchmarks/predict.py", "decoded"),
        "preprocess: resample, normalise": ("pipelines/audio_classification.py", "preprocess"),
        "the model, one clip at a time (`_forward`)": ("pipelines/audio_classification.py", "_forward"),
        "postprocess": ("pipelines/audio_classification.py", "postprocess"),
    },
}


def train_checkpoint(root: Path, scratch: Path, encoder: str, steps: int) -> Path:
    """The last checkpoint of the demo experiment trained for ``steps`` optimizer steps by ``ser.train.train``."""
    from ser.config import compose
    from ser.train import train

    cfg = compose(
        [
            "experiment=demo",
            f"data.root={root}",
            "data.synthesize_actors=null",
            f"data.cache_dir={scratch / 'cache'}",
            "data.split=random",
            f"trainer.max_steps={steps}",
            "trainer.limit_val_batches=2",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "test_after_fit=false",
            "logger=csv",  # train() monitors the learning rate, which needs a logger
            f"run_dir={scratch / 'run'}",
        ]
    )
    use_encoder(cfg, encoder)
    train(cfg)
    return scratch / "run" / "checkpoints" / "last.ckpt"


def decoded(paths: list[str]):
    """The pipeline's inputs, decoded one file at a time as it asks for them."""
    import soundfile as sf

    for path in paths:
        samples, rate = sf.read(path, dtype="float32")
        yield {"raw": samples.mean(axis=1) if samples.ndim == 2 else samples, "sampling_rate": rate}


def score_with_ser(
    model, paths: list[str], batch_size: int = BATCH_SIZE, onednn: bool = True
) -> tuple[list[str], np.ndarray]:
    """Labels and probabilities (N, C) in the model's label order, from ``ser predict``'s Python side."""
    import torch

    from ser.inference import predict

    with torch.backends.mkldnn.flags(enabled=onednn):
        predictions = predict(model, paths, batch_size=batch_size)
    failed = [p for p in predictions if p.error is not None]
    if failed:
        raise SystemExit(f"error: ser predict failed on {failed[0].path}: {failed[0].error}")
    return [p.label for p in predictions], np.array([list(p.probabilities.values()) for p in predictions])


def score_with_pipeline(
    classifier, paths: list[str], labels: list[str], batch_size: int
) -> tuple[list[str], np.ndarray]:
    """Labels and probabilities (N, C), in ``labels``' order, from ``transformers.pipeline``."""
    outputs = classifier(decoded(paths), top_k=None, batch_size=batch_size)
    top, probabilities = [], []
    for scores in outputs:
        by_label = {entry["label"]: entry["score"] for entry in scores}
        top.append(scores[0]["label"])
        probabilities.append([by_label[label] for label in labels])
    return top, np.array(probabilities)


def stage_seconds(score, paths: list[str], stages: dict[str, tuple[str, str]]) -> tuple[float, dict[str, float]]:
    """One pass of ``score(paths)`` under cProfile: its seconds, and the cumulative seconds of each stage."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(score, paths)
    total = time.perf_counter() - started
    found = pstats.Stats(
        profiler
    ).stats  # (file, line, function) -> (calls, primitive calls, own time, cumulative time, callers)
    seconds = {}
    for stage, (file_end, function) in stages.items():
        seconds[stage] = sum(
            timing[3] for (file, _, name), timing in found.items() if name == function and file.endswith(file_end)
        )
    return total, seconds


def stage_table(profiled: dict[str, tuple[float, dict[str, float]]]) -> str:
    lines = ["| side | stage | seconds | share |", "| --- | --- | --- | --- |"]
    for side, (total, seconds) in profiled.items():
        for stage, value in seconds.items():
            lines.append(f"| {side} | {stage} | {value:.2f} | {value / total:.0%} |")
        lines.append(f"| {side} | the whole pass | {total:.2f} | 100% |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--encoder-config",
        default="tiny",
        choices=list(ENCODER_CONFIGS),
        help="encoder sizes of the trained checkpoint (default: tiny)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="a ser checkpoint to export and score with (default: one trained here)"
    )
    parser.add_argument("--files", type=int, help="files to score (default 480: 8 synthetic actors)")
    parser.add_argument("--repeats", type=int, help="timed runs per side (default 3)")
    parser.add_argument("--device", default="cpu", help="where both sides run the model (cpu, cuda)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 60 files, one timed run per side")
    parser.add_argument(
        "--output", type=Path, default=BENCHMARKS_MD, help="the benchmarks file to write (default: BENCHMARKS.md)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    files = args.files or (60 if args.quick else 480)
    repeats = args.repeats or (1 if args.quick else 3)

    import torch
    from rich.progress import track
    from transformers import pipeline

    from ser.data.synth import synthesize_corpus
    from ser.export import export_hf
    from ser.inference import expand_paths, load_model

    with tempfile.TemporaryDirectory(prefix="ser-bench-predict-") as scratch_dir:
        scratch = Path(scratch_dir)
        root = synthesize_corpus(scratch / "ravdess-synth", actors=min(24, -(-files // 60)), seed=0)
        paths = [path for path, _ in expand_paths([root])][:files]
        if len(paths) < files:
            raise SystemExit(f"error: the synthetic corpus holds {len(paths)} files, fewer than --files {files}")
        steps = 2 if args.quick else CHECKPOINT_STEPS
        checkpoint = args.checkpoint or train_checkpoint(root, scratch, args.encoder_config, steps)
        exported = export_hf(checkpoint, scratch / "exported")

        started = time.perf_counter()
        model = load_model(exported, device=args.device)
        ser_load = time.perf_counter() - started
        started = time.perf_counter()
        classifier = pipeline("audio-classification", model=str(exported), device=torch.device(args.device))
        pipeline_load = time.perf_counter() - started
        labels = model.labels

        sides = {
            "ser predict": lambda files: score_with_ser(model, files),
            "pipeline(), batch 1": lambda files: score_with_pipeline(classifier, files, labels, batch_size=1),
            f"pipeline(), batch {BATCH_SIZE}": lambda files: score_with_pipeline(
                classifier, files, labels, batch_size=BATCH_SIZE
            ),
            f"ser predict --batch-size {LARGE_BATCH_SIZE} (not the default)": lambda files: score_with_ser(
                model, files, LARGE_BATCH_SIZE
            ),
            "ser predict, oneDNN off (not the default)": lambda files: score_with_ser(model, files, onednn=False),
        }
        for score in sides.values():  # the first calls of a model are slower
            score(paths[:WARM_UP_FILES])

        seconds = {side: [] for side in sides}
        outputs = {}
        for _ in track(range(repeats), description=f"Scoring {len(paths)} files, {len(sides)} ways"):
            for side, score in sides.items():  # in turns, so that a change of machine load hits every side alike
                started = time.perf_counter()
                outputs[side] = score(paths)
                seconds[side].append(time.perf_counter() - started)
        profiled = {side: stage_seconds(sides[side], paths, stages) for side, stages in STAGES.items()}

    median = {side: statistics.median(times) for side, times in seconds.items()}
    ser_labels, ser_probabilities = outputs["ser predict"]
    baseline = "pipeline(), batch 1"
    rows = []
    for side in sides:
        side_labels, side_probabilities = outputs[side]
        agree = np.mean([a == b for a, b in zip(ser_labels, side_labels)])
        rows.append(
            f"| {side} | {len(paths) / median[side]:.1f} | {median[baseline] / median[side]:.2f}x | {median[side]:.2f} | "
            f"{agree:.1%} | {np.abs(side_probabilities - ser_probabilities).max():.1e} |"
        )
    ratio = median[baseline] / median["ser predict"]
    ratio_batched = median[f"pipeline(), batch {BATCH_SIZE}"] / median["ser predict"]
    source = (
        f"`{args.checkpoint}`"
        if args.checkpoint
        else f"encoder `{args.encoder_config}` trained for {steps} steps by `ser.train`"
    )
    body = f"""`{command_line("predict.py")}`: {len(paths)} synthetic RAVDESS-format files (48 kHz WAV); the model: {source}, exported with `ser.export.export_hf`, loaded by both sides from that directory; device {args.device}. Median of {repeats} timed run(s) per side, the sides in turns, decoding included.

| side | clips/s | speed-up over pipeline(), batch 1 | seconds | same label as ser predict | max abs probability difference |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Loading the model: `ser.inference.load_model` {ser_load:.2f} s, `pipeline()` {pipeline_load:.2f} s.

- `ser predict` is {ratio:.2f}x as fast as `pipeline()` at its default batch size (target 2x: {"met" if ratio >= 2 else "missed"}), and {ratio_batched:.2f}x as fast as `pipeline()` in batches of {BATCH_SIZE}.

Where the time goes, one more pass of each under cProfile (which slows Python code more than torch's):

{stage_table(profiled)}
"""
    print(body)
    print(f"written to {write_section('predict', body, args.output)}")


if __name__ == "__main__":
    main()

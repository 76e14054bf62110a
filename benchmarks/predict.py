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
  At batch sizes 1, 8 and 32; ``ser predict`` is compared with the fastest of the three.
- ``ser predict`` on the same model exported to ONNX (``ser.export.export_onnx``), run by onnxruntime.
- two settings ``ser predict`` does not use by default, to see what they would give: batches of 8
  (``--batch-size 8``), and torch's oneDNN convolutions switched off.

Every side runs on the same cores (``--threads``, by default torch's own count), so that the comparison
does not depend on the machine's load (``ser predict`` alone would take only the idle cores): ``pipeline()``
on that many torch threads, ``ser predict`` with a torch model scoring that many batches side by side.

Then, each in fresh processes:

- one file from the command line, split into starting the interpreter, imports, loading the model and
  scoring, against ``python -c "import torch"``;
- a long recording (synthetic clips with pauses, 16 kHz) through ``ser predict --segments``: seconds of
  audio per second for a 10-minute file, and the peak memory of a 10-, a 30- and a 60-minute file;
- many short files through ``ser predict DIR --json``: the peak memory of 500 and of 5,000 files.

A side's time runs from the list of paths to every file's probabilities, decoding included; loading the
model is timed apart. The files are N synthetic RAVDESS-format clips (48 kHz WAV, so every side resamples).
After a warm-up on a few files, the sides take turns, ``--repeats`` times each; the median time counts.
The labels of the two sides are compared file by file. A last pass of ``ser predict`` and of
``pipeline()`` under cProfile says which of their stages (decoding, preprocessing, the model) takes the time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import BENCHMARKS_MD, ENCODER_CONFIGS, command_line, use_encoder, write_section

SMALL_BATCH_SIZE = 8
PIPELINE_BATCH_SIZES = (1, SMALL_BATCH_SIZE, 32)
RECORDING_RATE = 16_000
# Runs `ser` in this process and reports its peak resident memory in KiB on stderr, even when it exits 1. It reads
# VmHWM: after fork and exec, getrusage's ru_maxrss still holds the parent's peak, which hides the child's own.
PEAK_MEMORY_RUNNER = """
import re, sys
from pathlib import Path
from ser.cli import main
try:
    main(sys.argv[1:])
finally:
    peak = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)
    print("PEAK_KIB", peak, file=sys.stderr)
"""
# One file from a fresh interpreter, timed in stages: argv = launch time (time.time()), model, file.
COLD_START_RUNNER = """
import json, sys, time
started = time.time()
from ser.inference import load_model, predict
imported = time.time()
model = load_model(sys.argv[2], device=sys.argv[4])
loaded = time.time()
[prediction] = predict(model, [sys.argv[3]])
scored = time.time()
assert prediction.error is None, prediction.error
print(json.dumps({"interpreter": started - float(sys.argv[1]), "imports": imported - started,
                  "loading the model": loaded - imported, "scoring": scored - loaded}))
"""
WARM_UP_FILES = 8
CHECKPOINT_STEPS = 20  # a trained model, for predictions that mean something; the speed does not depend on it
# The stages of each side timed under cProfile: (the end of the file's path, the function)
STAGES = {
    "ser predict": {
        "the model, in batches of similar length (`score_waveforms`)": ("ser/inference.py", "score_waveforms"),
        # cProfile sees the main thread only: reading runs in threads, beside the model, so it is what is left
        "the rest: waiting for files that threads decode, resample and normalise, windows, results": None,
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
    model, paths: list[str], threads: int, batch_size: int | None = None, onednn: bool = True
) -> tuple[list[str], np.ndarray]:
    """Labels and probabilities (N, C) in the model's label order, from ``ser predict``'s Python side."""
    import torch

    from ser.inference import predict

    options = {} if batch_size is None else {"batch_size": batch_size}
    with torch.backends.mkldnn.flags(enabled=onednn):
        predictions = predict(model, paths, threads=threads, **options)
    failed = [p for p in predictions if p.error is not None]
    if failed:
        raise SystemExit(f"error: ser predict failed on {failed[0].path}: {failed[0].error}")
    return [p.label for p in predictions], np.array([list(p.probabilities.values()) for p in predictions])


def score_with_pipeline(
    classifier, paths: list[str], labels: list[str], batch_size: int, threads: int
) -> tuple[list[str], np.ndarray]:
    """Labels and probabilities (N, C), in ``labels``' order, from ``transformers.pipeline`` on ``threads``."""
    from ser.inference import torch_threads

    with torch_threads(threads):
        outputs = list(classifier(decoded(paths), top_k=None, batch_size=batch_size))
    top, probabilities = [], []
    for scores in outputs:
        by_label = {entry["label"]: entry["score"] for entry in scores}
        top.append(scores[0]["label"])
        probabilities.append([by_label[label] for label in labels])
    return top, np.array(probabilities)


def stage_seconds(score, paths: list[str], stages: dict[str, tuple[str, str] | None]) -> tuple[float, dict[str, float]]:
    """One pass of ``score(paths)`` under cProfile: its seconds, and the cumulative seconds of each stage
    (``(file end, function)``; None: the time the other stages leave)."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(score, paths)
    total = time.perf_counter() - started
    found = pstats.Stats(
        profiler
    ).stats  # (file, line, function) -> (calls, primitive calls, own time, cumulative time, callers)
    seconds = {}
    for stage, where in stages.items():
        if where is not None:
            file_end, function = where
            seconds[stage] = sum(
                timing[3] for (file, _, name), timing in found.items() if name == function and file.endswith(file_end)
            )
    for stage, where in stages.items():
        if where is None:
            seconds[stage] = total - sum(seconds.values())
    return total, {stage: seconds[stage] for stage in stages}


def stage_table(profiled: dict[str, tuple[float, dict[str, float]]]) -> str:
    lines = ["| side | stage | seconds | share |", "| --- | --- | --- | --- |"]
    for side, (total, seconds) in profiled.items():
        for stage, value in seconds.items():
            lines.append(f"| {side} | {stage} | {value:.2f} | {value / total:.0%} |")
        lines.append(f"| {side} | the whole pass | {total:.2f} | 100% |")
    return "\n".join(lines)


def write_recording(path: Path, clips: list[str], seconds: float, seed: int = 0) -> float:
    """A 16 kHz mono recording of ``clips`` one after another with 0.5-2 s pauses, written in blocks.

    Returns its duration in seconds.
    """
    import soundfile as sf

    from ser.data import audio

    rng = np.random.default_rng(seed)
    speech = [audio.load(clip, RECORDING_RATE, normalize=False, trim_db=-40.0) for clip in clips]
    total, target = 0, int(seconds * RECORDING_RATE)
    with sf.SoundFile(path, "w", samplerate=RECORDING_RATE, channels=1, subtype="PCM_16") as out:
        while total < target:
            for clip in speech:
                pause = (rng.standard_normal(int(rng.uniform(0.5, 2.0) * RECORDING_RATE)) * 1e-3).astype(np.float32)
                piece = np.concatenate([pause, clip])[: target - total]
                out.write(piece)
                total += len(piece)
                if total >= target:
                    break
    return total / RECORDING_RATE


def write_short_files(folder: Path, recording: Path, count: int, seconds: float = 1.0) -> Path:
    """``count`` files of ``seconds`` each, cut one after another from ``recording`` (round again at its end)."""
    import soundfile as sf

    samples, rate = sf.read(recording, dtype="int16")
    length = int(seconds * rate)
    folder.mkdir()
    for i in range(count):
        start = i * length % (len(samples) - length)
        sf.write(folder / f"{i:05d}.wav", samples[start : start + length], rate, subtype="PCM_16")
    return folder


def run_ser(argv: list[str]) -> tuple[float, float, str]:
    """``ser ARGV`` in a fresh process: its wall seconds, its peak memory in MiB, and its stdout."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_RUNNER, "-q", *argv], capture_output=True, text=True, env=child_env()
    )
    seconds = time.perf_counter() - started
    peak = [line for line in result.stderr.splitlines() if line.startswith("PEAK_KIB ")]
    if result.returncode != 0 or not peak:
        raise SystemExit(f"error: ser {' '.join(argv)} failed: {result.stderr[-2000:]}")
    return seconds, int(peak[-1].split()[1]) / 1024, result.stdout


def child_env() -> dict[str, str]:
    """This interpreter's environment, with the repository first on the path (as `PYTHONPATH=$PWD`)."""
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def cold_start(model: Path, file: str, repeats: int, device: str) -> tuple[dict[str, float], float, float]:
    """Medians over ``repeats`` fresh processes: the stages of one file's prediction, the whole
    ``ser predict MODEL FILE --json`` command, and ``python -c "import torch"``."""
    stages, command, torch_only = [], [], []
    for _ in range(repeats):
        launched = time.time()
        result = subprocess.run(
            [sys.executable, "-c", COLD_START_RUNNER, repr(launched), str(model), file, device],
            capture_output=True,
            text=True,
            env=child_env(),
        )
        if result.returncode != 0:
            raise SystemExit(f"error: scoring one file in a fresh process failed: {result.stderr[-2000:]}")
        stages.append(json.loads(result.stdout.splitlines()[-1]))
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ser.cli", "-q", "predict", str(model), file, "--json", "--device", device],
            check=True,
            capture_output=True,
            env=child_env(),
        )
        command.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True, env=child_env())
        torch_only.append(time.perf_counter() - started)
    medians = {stage: statistics.median(run[stage] for run in stages) for stage in stages[0]}
    return medians, statistics.median(command), statistics.median(torch_only)


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
    parser.add_argument("--threads", type=int, help="cores of every side (default: torch's own thread count)")
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
    from ser.export import export_hf, export_onnx
    from ser.inference import expand_paths, load_model
    from ser.segments import segment_files

    with tempfile.TemporaryDirectory(prefix="ser-bench-predict-") as scratch_dir:
        scratch = Path(scratch_dir)
        root = synthesize_corpus(scratch / "ravdess-synth", actors=min(24, -(-files // 60)), seed=0)
        paths = [path for path, _ in expand_paths([root])][:files]
        if len(paths) < files:
            raise SystemExit(f"error: the synthetic corpus holds {len(paths)} files, fewer than --files {files}")
        steps = 2 if args.quick else CHECKPOINT_STEPS
        checkpoint = args.checkpoint or train_checkpoint(root, scratch, args.encoder_config, steps)
        exported = export_hf(checkpoint, scratch / "exported")
        onnx_file = export_onnx(checkpoint, scratch / "exported.onnx")
        onnx_model = load_model(onnx_file)

        started = time.perf_counter()
        model = load_model(exported, device=args.device)
        ser_load = time.perf_counter() - started
        started = time.perf_counter()
        classifier = pipeline("audio-classification", model=str(exported), device=torch.device(args.device))
        pipeline_load = time.perf_counter() - started
        labels = model.labels
        threads = args.threads or torch.get_num_threads()  # read before silero-vad, loaded later, sets its own

        sides = {
            "ser predict": lambda files: score_with_ser(model, files, threads),
            **{
                f"pipeline(), batch {size}": lambda files, size=size: score_with_pipeline(
                    classifier, files, labels, size, threads
                )
                for size in PIPELINE_BATCH_SIZES
            },
            "ser predict, ONNX model (onnxruntime)": lambda files: score_with_ser(onnx_model, files, threads),
            f"ser predict --batch-size {SMALL_BATCH_SIZE} (not the default)": lambda files: score_with_ser(
                model, files, threads, SMALL_BATCH_SIZE
            ),
            "ser predict, oneDNN off (not the default)": lambda files: score_with_ser(
                model, files, threads, onednn=False
            ),
        }
        for score in sides.values():  # the first calls of a model are slower
            score(paths[:WARM_UP_FILES])

        load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        seconds = {side: [] for side in sides}
        outputs = {}
        for _ in track(range(repeats), description=f"Scoring {len(paths)} files, {len(sides)} ways"):
            for side, score in sides.items():  # in turns, so that a change of machine load hits every side alike
                started = time.perf_counter()
                outputs[side] = score(paths)
                seconds[side].append(time.perf_counter() - started)
        load_after = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        profiled = {side: stage_seconds(sides[side], paths, stages) for side, stages in STAGES.items()}

        cold = {
            "exported directory (transformers)": cold_start(exported, paths[0], repeats, args.device),
            "ONNX file (onnxruntime)": cold_start(onnx_file, paths[0], repeats, args.device),
        }

        minutes = (0.5, 1.5) if args.quick else (10, 30, 60)
        recordings = {}
        for length in minutes:
            recordings[length] = scratch / f"recording-{length}min.wav"
            write_recording(recordings[length], paths[:60], length * 60)
        started = time.perf_counter()
        segments = list(segment_files(model, [recordings[minutes[0]]]))
        segment_seconds = time.perf_counter() - started
        if any(s.error is not None for s in segments):
            raise SystemExit(f"error: --segments failed on {recordings[minutes[0]]}")
        memory_long = {
            length: run_ser(["predict", str(exported), str(file), "--segments", "--json", "--device", args.device])
            for length, file in recordings.items()
        }

        counts = (30, 90) if args.quick else (500, 5000)
        memory_many = {}
        for count in counts:
            folder = write_short_files(scratch / f"files-{count}", recordings[minutes[0]], count)
            memory_many[count] = run_ser(["predict", str(exported), str(folder), "--json", "--device", args.device])
            printed = len(memory_many[count][2].splitlines())
            if printed != count:
                raise SystemExit(f"error: ser predict --json printed {printed} lines for {count} files")

    median = {side: statistics.median(times) for side, times in seconds.items()}
    ser_labels, ser_probabilities = outputs["ser predict"]
    baseline = "pipeline(), batch 1"
    rows = []
    for side in sides:
        side_labels, side_probabilities = outputs[side]
        agree = np.mean([a == b for a, b in zip(ser_labels, side_labels)])
        rows.append(
            f"| {side} | {len(paths) / median[side]:.1f} | {median[baseline] / median[side]:.2f}x "
            f"| {median[side]:.2f} | {agree:.1%} | {np.abs(side_probabilities - ser_probabilities).max():.1e} |"
        )
    pipelines = [f"pipeline(), batch {size}" for size in PIPELINE_BATCH_SIZES]
    best = min(pipelines, key=median.get)
    ratio = median[baseline] / median["ser predict"]
    ratio_best = median[best] / median["ser predict"]
    source = (
        f"`{args.checkpoint}`"
        if args.checkpoint
        else f"encoder `{args.encoder_config}` trained for {steps} steps by `ser.train`"
    )
    cold_header = " | ".join(cold)
    stages = next(iter(cold.values()))[0]
    cold_rows = "\n".join(
        f"| {stage} | "
        + " | ".join(f"{parts[stage]:.2f} ({parts[stage] / sum(parts.values()):.0%})" for parts, _, _ in cold.values())
        + " |"
        for stage in stages
    )
    commands = "; ".join(f"{model} {command:.2f} s" for model, (_, command, _) in cold.items())
    torch_seconds = statistics.median(seconds for _, _, seconds in cold.values())
    scoring_share = max(parts["scoring"] / sum(parts.values()) for parts, _, _ in cold.values())
    short = minutes[0]
    long_rows = "\n".join(
        f"| {length} min | {seconds:.1f} | {peak:.0f} |" for length, (seconds, peak, _) in memory_long.items()
    )
    many_rows = "\n".join(
        f"| {count} | {seconds:.1f} | {count / seconds:.1f} | {peak:.0f} |"
        for count, (seconds, peak, _) in memory_many.items()
    )
    few, many = counts
    paragraphs = [
        f"`{command_line('predict.py')}`: {len(paths)} synthetic RAVDESS-format files (48 kHz WAV); the model: "
        f"{source}, exported with `ser.export.export_hf` (and `export_onnx` for the ONNX side), loaded by both sides "
        f"from that directory; device {args.device}. Median of {repeats} timed run(s) per side, the sides in turns, "
        "decoding included.",
        "| side | clips/s | speed-up over pipeline(), batch 1 | seconds | same label as ser predict "
        "| max abs probability difference |\n| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows),
        f"Loading the model: `ser.inference.load_model` {ser_load:.2f} s, `pipeline()` {pipeline_load:.2f} s.",
        f"- `ser predict` is {ratio_best:.2f}x as fast as `pipeline()` at its best batch size ({best.split()[-1]}) "
        f"(target 2x: {'met' if ratio_best >= 2 else 'missed'}), and {ratio:.2f}x as fast as `pipeline()` at its "
        "default batch size (1).",
        f"- every side on {threads} core(s): `pipeline()` on as many torch threads, `ser predict` with as many "
        "batches side by side (one torch thread each; onnxruntime parallelises within a batch). "
        "Load average when the timed runs started and ended: "
        f"{load_before} and {load_after} (`os.getloadavg`, 1, 5 and 15 minutes).",
        f"One file from the command line, in fresh processes (median of {repeats}): `ser predict MODEL FILE --json` "
        f'takes: {commands}; `python -c "import torch"` takes {torch_seconds:.2f} s. The stages of the same '
        "prediction, timed inside a fresh interpreter, seconds (share):",
        f"| stage | {cold_header} |\n| --- | --- | --- |\n" + cold_rows,
        f"- scoring is at most {scoring_share:.0%} of the time to the result (target: not where the time goes, "
        f"{'met' if scoring_share < 0.1 else 'missed'}).",
        f"A long recording (synthetic clips with 0.5-2 s pauses, {RECORDING_RATE // 1000} kHz mono): the "
        f"{short}-minute file through `segment_files` (what `ser predict --segments` runs) gives {len(segments)} "
        f"segments in {segment_seconds:.1f} s, **{short * 60 / segment_seconds:.1f} seconds of audio per second**. "
        "Peak memory of `ser predict MODEL FILE --segments --json` in a fresh process, which reads the file in blocks:",
        "| recording | seconds | peak memory (MiB) |\n| --- | --- | --- |\n" + long_rows,
        f"- against the {short}-minute file's memory: "
        + ", ".join(
            f"the {length}-minute file needs {memory_long[length][1] / memory_long[short][1]:.2f}x"
            for length in minutes[1:]
        )
        + ".",
        "Many short files through `ser predict DIR --json` in a fresh process, each result printed as its group of "
        "files is scored:",
        "| files | seconds | files/s | peak memory (MiB) |\n| --- | --- | --- | --- |\n" + many_rows,
        f"- {many} files need {memory_many[many][1] / memory_many[few][1]:.2f}x the memory of {few}.",
    ]
    body = (
        "\n\n".join(paragraphs)
        + f"""

Where the time goes, one more pass of each under cProfile (which slows Python code more than torch's):

{stage_table(profiled)}
"""
    )
    print(body)
    print(f"written to {write_section('predict', body, args.output)}")


if __name__ == "__main__":
    main()

"""Benchmark the start of training on a warm cache, and what dataloader workers hold of the cache.

    python benchmarks/start.py [--root DIR] [--repeats N] [--workers N] [--quick] [--output FILE]

Start: the corpus is prepared once (the cache is then warm), and a new process trains the demo's
configuration (``experiment=demo``, conf/model/tiny.yaml) on it, built by ``ser.train``'s
build_module / build_datamodule / build_trainer as ``train.py`` does, up to its first optimizer
step. Each phase is timed from the moment the process was launched, so interpreter start-up and
imports are counted; the median of ``--repeats`` launches is reported. The model is the demo's
randomly initialised encoder: loading a downloaded checkpoint (``from_pretrained``) adds the time
to read it from disk, which depends on the disk, not on this project.

Workers: one epoch of the training loader with ``--workers`` worker processes; then, from each
worker's memory maps, the pages of the cache's audio file it has mapped (file-backed: the kernel's
page cache, which every process reading the file shares, and which the kernel can drop) and its own
memory: the pages no other process maps (USS) less those of the cache, that is its heap, stacks and
the pages it copied on write from the parent. A worker that held a copy of the corpus would own at
least the audio file's size. (USS alone would count the cache's pages that only this worker has read.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import BENCHMARKS_MD, command_line, write_section

PHASES = (  # (key, what happened by then), in order
    ("interpreter", "Python started, this script's first line"),
    ("imports", "imports: torch, Lightning, transformers, ser"),
    ("config", "config composed (Hydra, the schema checked)"),
    ("model", "model built (the demo's encoder, random weights)"),
    ("trainer", "Trainer built"),
    ("data", "corpus loaded from the cache and split (prepare_data, setup)"),
    ("first_batch", "first training batch in hand (loaders built)"),
    ("first_step", "first optimizer step done"),
)


def overrides(job: dict, workers: int = 0) -> list[str]:
    return [
        "experiment=demo",
        f"data.root={job['root']}",
        "data.synthesize_actors=null",
        "data.download=false",
        f"data.cache_dir={job['cache']}",
        f"data.num_workers={workers}",
        "trainer.max_steps=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"run_dir={job['run_dir']}",
        *job["extra"],
    ]


def start_child(job: dict, launched: float) -> dict:
    """Runs in a new process: train to the first optimizer step, recording when each phase ended."""
    stamps = {"interpreter": time.time()}
    import pytorch_lightning as pl

    from ser.config import compose
    from ser.train import build_datamodule, build_module, build_trainer

    stamps["imports"] = time.time()
    cfg = compose(overrides(job))
    stamps["config"] = time.time()
    pl.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    stamps["model"] = time.time()
    datamodule = build_datamodule(cfg, Path(cfg.run_dir))

    class Stamps(pl.Callback):
        def setup(self, trainer, pl_module, stage):  # Lightning calls it after prepare_data and datamodule.setup
            stamps["data"] = time.time()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            stamps.setdefault("first_batch", time.time())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= 1:
                stamps.setdefault("first_step", time.time())

    trainer = build_trainer(cfg, Path(cfg.run_dir), logger=None, callbacks=[Stamps()])
    stamps["trainer"] = time.time()
    trainer.fit(module, datamodule=datamodule)
    return {key: stamps[key] - launched for key, _ in PHASES}


def workers_child(job: dict) -> dict:
    """Runs in a new process: one epoch of the training loader with workers, then their memory."""
    import psutil

    from ser.config import compose
    from ser.train import build_datamodule

    cfg = compose(overrides(job, workers=job["workers"]))
    datamodule = build_datamodule(cfg, Path(cfg.run_dir))
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()  # persistent workers: still alive after the epoch
    clips = sum(len(batch["labels"]) for batch in loader)
    audio_file = str(Path(datamodule.corpus.path) / "audio.f32")
    workers = []
    for worker in psutil.Process().children():
        maps = worker.memory_maps(grouped=True)
        workers.append(
            {
                # the cache's pages this worker has mapped: the kernel's page cache, the same pages for every process
                "audio_mib": sum(m.rss for m in maps if m.path == audio_file) / 2**20,
                # pages no other process maps (USS), less the cache's: the worker's own heap, stacks and the pages
                # it copied on write from the parent; a copy of the corpus would be here
                "own_mib": sum(m.private_clean + m.private_dirty for m in maps if m.path != audio_file) / 2**20,
            }
        )
    return {"clips": clips, "audio_file_mib": Path(audio_file).stat().st_size / 2**20, "workers": workers}


def run_child(mode: str, job: dict) -> dict:
    launched = time.time()
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--job", json.dumps(job), "--launched", repr(launched)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"error: the {mode} process failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root", type=Path, help="a RAVDESS-format corpus (default: a fresh synthetic 24-actor corpus)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="launches timed; the median is reported (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers for the memory check (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 actors, 1 launch")
    parser.add_argument(
        "--output", type=Path, default=BENCHMARKS_MD, help="the benchmarks file to write (default: BENCHMARKS.md)"
    )
    parser.add_argument("--child", choices=("start", "workers"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.job)
        result = start_child(job, args.launched) if args.child == "start" else workers_child(job)
        print(json.dumps(result))
        return

    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(prefix="ser-bench-start-") as scratch_dir:
        scratch = Path(scratch_dir)
        root = args.root
        if root is None:
            from ser.data.synth import synthesize_corpus

            root = synthesize_corpus(scratch / "ravdess-synth", actors=2 if args.quick else 24, seed=0)
        from ser.data.prepare import prepare

        corpus = prepare(root, scratch / "cache", progress=False)  # from here on the cache is warm
        job = {
            "root": str(root),
            "cache": str(scratch / "cache"),
            "run_dir": str(scratch / "run"),
            "workers": args.workers,
            "extra": ["data.split=random"] if args.quick else [],
        }  # two actors are too few for the demo's fold
        launches = [run_child("start", job) for _ in range(repeats)]
        memory = run_child("workers", job)

    median = {key: statistics.median(launch[key] for launch in launches) for key, _ in PHASES}
    rows, previous = [], 0.0
    for key, label in PHASES:
        rows.append(f"| {label} | {median[key] - previous:.2f} | {median[key]:.2f} |")
        previous = median[key]
    worker_rows = [
        f"| worker {i} | {worker['audio_mib']:.0f} | {worker['own_mib']:.0f} |"
        for i, worker in enumerate(memory["workers"])
    ]
    largest = max(worker["own_mib"] for worker in memory["workers"])
    summary = corpus.summary()
    start = median["first_batch"]
    body = f"""`{command_line("start.py")}`: the demo's training (`experiment=demo`) on {summary["clips"]} clips ({summary["hours"]:.2f} h of audio, {"synthetic corpus" if args.root is None else args.root}), warm cache, median of {repeats} launch(es), seconds from the launch of the process.

| phase | seconds | since launch |
| --- | --- | --- |
{chr(10).join(rows)}

- Warm-cache start of training (launch to the first training batch): {start:.2f} s (target under 5 s: {"met" if start < 5 else "missed"}); {median["imports"]:.2f} s of it is the interpreter and the imports, {start - median["imports"]:.2f} s the project's own start after them (config, model, trainer, corpus index and split, loaders).

One epoch of the training loader ({memory["clips"]} clips) with {len(memory["workers"])} worker processes; the cache's audio file is {memory["audio_file_mib"]:.0f} MiB:

| process | the cache's audio mapped, file-backed (MiB) | its own memory: unique pages less the cache's (MiB) |
| --- | --- | --- |
{chr(10).join(worker_rows)}

- The audio a worker has read stays in the kernel's page cache, mapped by whichever workers read it; each worker's own memory (pages no other process maps, less the cache's: heap, stacks, pages copied on write) is at most {largest:.0f} MiB against {memory["audio_file_mib"]:.0f} MiB of audio: {"no worker holds a copy of the corpus" if largest < memory["audio_file_mib"] else "a worker may hold a copy of the corpus"}.
"""
    print(body)
    print(f"written to {write_section('start', body, args.output)}")


if __name__ == "__main__":
    main()

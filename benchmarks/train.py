"""Benchmark training: this project's loop against the original recipe, side by side, in one run.

    python benchmarks/train.py [--encoder-config tiny|base|large] [--steps N] [--lr LR] [--root DIR]
                               [--sides ser,recipe,...] [--seeds 42,1,2] [--trim-db DB] [--variant OVERRIDES]...
                               [--profile] [--quick] [--output FILE]

The original recipe is how the published model (ehcalabres/wav2vec2-lg-xlsr-en-speech-emotion-recognition)
was trained: ``transformers.Trainer`` fine-tuning ``Wav2Vec2ForSequenceClassification``, the audio decoded
and resampled inside ``datasets.map`` (normalised by ``Wav2Vec2FeatureExtractor``), a collator that pads
every batch to its longest clip, and no length grouping. The sides, each in a process of its own (so
that its peak memory is its own), on the same corpus:

- ``ser``: this project's training (``ser.train``'s build_module / build_datamodule / build_trainer),
  with its memory-mapped preparation cache and length-bucketed batches;
- ``recipe``: the original recipe, reimplemented with ``transformers.Trainer``;
- ``ser-trim``: ``ser`` with ``data.trim_db`` (the silence around the speech cut in preparation);
- ``ser-onednn`` (not run by default): ``ser`` with torch's oneDNN convolutions on (``cpu_onednn=true``),
  which the project switches off for training on a CPU: what that choice saves;
- ``--variant 'data.bucket_batches=4'``: ``ser`` with more Hydra overrides, another setting to try.

The sides take turns at the machine, a few optimizer steps each (see :class:`Turns`), so that none
competes with another for the cores and a change of the machine's load during the run falls on all
of them alike. All start from the same initial weights (checked by a fingerprint), train on the same
split (the recipe's protocol: random stratified 80/20) with the same batch size, gradient
accumulation, optimizer (Adam 0.9 / 0.999 / 1e-8, no weight decay), learning rate with linear decay
to zero, gradient clipping at norm 1 (the Trainer's default, which the recipe kept), precision and
number of optimizer steps. Their final models are scored by the same code (``ser.evaluate``) on the
same validation clips. All of this is repeated for every seed of ``--seeds`` (the split, the initial
weights and the order of the batches follow it), and the figures are means over the seeds: trained
from random weights, a side's validation accuracy changes by several points from one seed to the
next, more than the sides differ.

Measured in the training loop (from its start to its last optimizer step, less the other sides'
turns; preparation and evaluation are outside): clips per second, the fraction of encoder frames
that are padding, the fraction of the loop's time spent inside the training DataLoader's ``next()``
(both sides load in the training process, ``num_workers=0``, the recipe's and the project's
default), the side's peak resident memory (its whole process) and, on CUDA, peak GPU memory.
``--profile`` splits each loop's time into data, forward, backward and the rest with torch.profiler.
Defaults: the demo's encoder (conf/model/tiny.yaml) on a synthetic 24-actor corpus, on CPU;
``--encoder-config base`` and ``large`` (random weights) are for a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from report import BENCHMARKS_MD, ENCODER_CONFIGS, command_line, use_encoder, write_section

SEED = 42  # the recipe's
# From random weights after 288 steps, validation accuracy moves by several points from one seed to the
# next (26% to 41% for the same side on the synthetic corpus): one seed cannot tell two sides apart.
DEFAULT_SEEDS = "42,1,2"
SIDES = ("ser", "recipe", "ser-trim", "ser-onednn")
DEFAULT_SIDES = "ser,recipe,ser-trim"
VARIANT = "variant-"  # the sides of --variant are named variant-0, variant-1, ...
SLICE_STEPS = 8  # optimizer steps a side trains in one turn
# Ops listed per side by --profile
PROFILE_TOP_OPS = 8


# --- what every side shares ----------------------------------------------------------------------


def compose_config(job: dict, trim_db: float | None, variant: tuple[str, ...] = ()):
    """The project's config for this benchmark: the recipe's training settings on the job's encoder and corpus.

    ``variant``: more Hydra overrides, for a side that tries a setting the project does not use by default.
    """
    from ser.config import compose

    overrides = [
        "model=tiny",
        f"data.root={job['root']}",
        "data.synthesize_actors=null",
        "data.download=false",
        f"data.cache_dir={job['cache']}",
        "data.split=random",
        f"data.batch_size={job['batch_size']}",
        f"data.trim_db={'null' if trim_db is None else trim_db}",
        "optimizer=adam",
        f"optimizer.lr={job['lr']}",
        "scheduler=linear",
        f"trainer.max_steps={job['steps']}",
        "trainer.max_epochs=-1",
        f"trainer.accumulate_grad_batches={job['accumulation']}",
        f"trainer.precision={job['precision']}",
        "trainer.gradient_clip_val=1.0",
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_val_batches=0",  # validation runs after training, on the final model, outside the timing
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"run_dir={job['scratch']}/run",
        f"seed={job['seed']}",
        *variant,
    ]
    cfg = compose(overrides)
    use_encoder(cfg, job["encoder_config"])
    return cfg


def initial_module(job: dict, trim_db: float | None = None, variant: tuple[str, ...] = ()):
    """The SERModule every side starts from: built after seeding, as ``ser.train.train`` builds it."""
    import pytorch_lightning as pl

    from ser.train import build_module

    cfg = compose_config(job, trim_db, variant)
    pl.seed_everything(job["seed"], workers=True, verbose=False)
    return cfg, build_module(cfg)


def fingerprint(state_dict) -> str:
    """A short digest of a state dict's tensors, to check that two sides start from the same weights."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def keys_digest(keys) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:12]


class Turns:
    """The sides take turns at the machine: a side runs only from the orchestrator's go to its own next pause.

    So no two sides ever compete for the cores, and a change in the machine's load over the run (other
    work on a shared machine) falls on every side alike, slice by slice, instead of on whichever side
    ran at the time. ``pause(steps_done)`` reports progress, waits for the next turn, and returns the
    seconds waited, which the meter leaves out of the loop's time.
    """

    def __init__(self, control_fd: int, status_fd: int):
        self._control = os.fdopen(control_fd, "r")
        self._status = os.fdopen(status_fd, "w")

    def pause(self, steps_done: int) -> float:
        started = time.perf_counter()
        self._status.write(f"{steps_done}\n")
        self._status.flush()
        if not self._control.readline():
            raise SystemExit("error: the benchmark that started this side has ended")
        return time.perf_counter() - started


class LoopMeter:
    """Wall time, clips, padding and data waiting of one training loop, less the pauses between its turns.

    The loop runs from ``start()`` to ``stop()``. Every batch a DataLoader hands out meanwhile is seen by
    ``fetched`` with the seconds its ``next()`` took; ``trained()`` counts the micro-batches trained on,
    which are the first ones fetched (the loops prefetch one ahead, so one more may be fetched).
    ``contents(batch) -> (lengths (B,) samples, padded length in samples, labels (B,))``. Padding is
    counted in encoder frames: ``frames_of(lengths (B,) samples) -> (B,) frames``. After every
    ``SLICE_STEPS`` optimizer steps the side pauses for the others' turns.
    """

    def __init__(self, frames_of: Callable, contents: Callable, turns: Turns, profile: LoopProfile | None = None):
        self.frames_of = frames_of
        self.contents = contents
        self.turns = turns
        self.profile = profile
        self.running = False
        self.batches: list[
            tuple[list[int], int, set[int], float]
        ] = []  # lengths, padded length, labels, seconds in next()
        self.micro_batches = 0
        self.paused = 0.0
        self._steps_done = 0

    def start(self) -> None:
        if self.profile is not None:
            self.profile.start()
        self.running = True
        self._cpu_started = _cpu_seconds()
        self._started = time.perf_counter()

    def fetched(self, batch, seconds: float) -> None:
        if self.running:
            lengths, padded, labels = self.contents(batch)
            self.batches.append(([int(n) for n in lengths], int(padded), set(labels.tolist()), seconds))

    def trained(self) -> None:
        self.micro_batches += 1

    def optimizer_step_done(self, steps_done: int) -> None:
        """Told after every micro-batch (Lightning) or optimizer step (Trainer) how many optimizer steps are done."""
        if steps_done != self._steps_done and steps_done % SLICE_STEPS == 0:
            _synchronize()  # this turn's kernels belong to this turn
            self.paused += self.turns.pause(steps_done)
        self._steps_done = steps_done

    def stop(self) -> None:
        _synchronize()  # the last step's kernels belong to the loop
        self.seconds = time.perf_counter() - self._started - self.paused
        self.cpu_share = (_cpu_seconds() - self._cpu_started) / (self.seconds * len(os.sched_getaffinity(0)))
        self.running = False
        if self.profile is not None:
            self.profile_result = self.profile.stop(self.seconds)

    def result(self) -> dict:
        import torch

        used = self.batches[: self.micro_batches]
        real = padded = 0
        for lengths, padded_length, _, _ in used:
            real += int(self.frames_of(torch.tensor(lengths)).sum())
            padded += int(self.frames_of(torch.tensor([padded_length]))[0]) * len(lengths)
        clips = sum(len(lengths) for lengths, _, _, _ in used)
        wait = sum(seconds for _, _, _, seconds in self.batches)  # a prefetched, unused batch was waited for too
        measured = {"profile": self.profile_result} if self.profile is not None else {}
        return {
            **measured,
            "clips": clips,
            "micro_batches": len(used),
            "loop_seconds": self.seconds,
            "clips_per_second": clips / self.seconds,
            "padded_frames": 1 - real / padded,
            "data_wait": wait / self.seconds,
            "emotions_per_batch": sum(len(labels) for _, _, labels, _ in used) / len(used),
            "cpu_share": self.cpu_share,
        }


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _cpu_seconds() -> float:
    """CPU time of this process so far: next to wall time it shows whether other work took the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def timed_fetches(meter: LoopMeter):
    """Time every DataLoader ``next()`` in this process, whichever framework calls it, for ``meter``.

    Lightning and accelerate both iterate a plain ``torch.utils.data.DataLoader``, so timing its iterator
    measures the two loops' data waiting with the same instrument.
    """
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    original = _BaseDataLoaderIter.__next__

    def timed_next(iterator):
        start = time.perf_counter()
        batch = original(iterator)
        meter.fetched(batch, time.perf_counter() - start)
        return batch

    _BaseDataLoaderIter.__next__ = timed_next
    try:
        yield
    finally:
        _BaseDataLoaderIter.__next__ = original


class LoopProfile:
    """torch.profiler over a training loop, with the model's forward pass marked as a region.

    The loop's time then splits into regions that do not overlap: waiting for data (torch marks every
    DataLoader ``next()``), the forward pass (marked here, on the model given), the backward pass (the
    autograd engine's nodes), and the rest (optimizer step, gradient clipping, the framework's own work).
    """

    def __init__(self, model):
        self.model = model
        self._regions = []

    def start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self._profiler = profile(activities=activities)
        self._hooks = [self.model.register_forward_pre_hook(self._enter), self.model.register_forward_hook(self._exit)]
        self._profiler.start()

    def _enter(self, module, args) -> None:
        from torch.profiler import record_function

        region = record_function("model forward")
        region.__enter__()
        self._regions.append(region)

    def _exit(self, module, args, output) -> None:
        self._regions.pop().__exit__(None, None, None)

    def stop(self, wall: float) -> dict:
        """Seconds per region and the ops that took the most time of their own."""
        self._profiler.stop()
        for hook in self._hooks:
            hook.remove()
        events = self._profiler.key_averages()

        def total(prefix: str) -> float:
            return sum(e.cpu_time_total for e in events if e.key.startswith(prefix)) / 1e6

        regions = {
            "waiting for data (DataLoader next)": total("enumerate(DataLoader)"),
            "forward": total("model forward"),
            "backward": total("autograd::engine::evaluate_function"),
        }
        regions["the rest: optimizer step, clipping, framework"] = wall - sum(regions.values())
        marks = ("enumerate(DataLoader)", "model forward", "Optimizer.", "autograd::engine", "ProfilerStep")
        ops = sorted(
            (e for e in events if not e.key.startswith(marks)), key=lambda e: e.self_cpu_time_total, reverse=True
        )
        top = [
            {"op": e.key, "self_seconds": e.self_cpu_time_total / 1e6, "calls": e.count} for e in ops[:PROFILE_TOP_OPS]
        ]
        return {"wall_seconds": wall, "regions": regions, "top": top}


def peak_memory() -> dict:
    import torch

    memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        memory["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return memory


# --- the project's side ----------------------------------------------------------------------------


def run_ser(job: dict, turns: Turns, trim_db: float | None, variant: tuple[str, ...] = ()) -> dict:
    """Train with this project's pieces; the final model goes to ``<scratch>/<side>.ckpt``."""
    import pytorch_lightning as pl

    from ser.train import build_datamodule, build_trainer

    turns.pause(0)  # the first turn starts here, after the imports
    cfg, module = initial_module(job, trim_db, variant)
    result = {
        "initial_weights": fingerprint(module.state_dict()),
        "attention": module.model.encoder.config._attn_implementation,
        "parameters": sum(p.numel() for p in module.parameters()),
    }
    datamodule = build_datamodule(cfg, Path(cfg.run_dir))
    started = time.perf_counter()
    datamodule.prepare_data()  # the cold preparation; fit's own call then finds the cache
    result["prepare_seconds"] = time.perf_counter() - started
    datamodule.setup("fit")
    corpus, split = datamodule.corpus, datamodule.split
    result["train_keys"] = keys_digest(corpus.clips[i]["key"] for i in split["train"])
    result["corpus_clips"] = len(corpus.clips)

    encoder = module.model.encoder
    meter = LoopMeter(
        frames_of=encoder._get_feat_extract_output_lengths,
        contents=lambda batch: (batch["attention_mask"].sum(dim=1), batch["attention_mask"].shape[1], batch["labels"]),
        turns=turns,
        profile=LoopProfile(module.model) if job["profile"] else None,
    )

    class Meter(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            meter.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            meter.trained()
            meter.optimizer_step_done(trainer.global_step)

        def on_train_end(self, trainer, pl_module):
            meter.stop()

    # Given a ModelCheckpoint that keeps none, Lightning adds no default one writing checkpoints inside the loop.
    keep_none = pl.callbacks.ModelCheckpoint(save_top_k=0, save_last=False)
    trainer = build_trainer(cfg, Path(cfg.run_dir), logger=False, callbacks=[Meter(), keep_none])
    with timed_fetches(meter):
        trainer.fit(module, datamodule=datamodule)
    result.update(meter.result(), optimizer_steps=trainer.global_step, **peak_memory())
    checkpoint = Path(job["scratch"]) / f"{job['side']}.ckpt"
    trainer.save_checkpoint(checkpoint)
    result["model"] = str(checkpoint)
    return result


# --- the original recipe ---------------------------------------------------------------------------


def run_recipe(job: dict, turns: Turns) -> dict:
    """Train as the recipe did, with transformers.Trainer; the final model goes to ``<scratch>/recipe/``."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForAudioClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        Wav2Vec2FeatureExtractor,
    )

    from ser.data import audio
    from ser.data.prepare import prepare
    from ser.data.ravdess import EMOTIONS
    from ser.data.splits import make_split
    from ser.models.classifier import hf_config, hf_state_dict
    from ser.models.encoder import load_encoder_config, uses_group_norm

    turns.pause(0)  # the first turn starts here, after the imports
    # The clip list and split only: the recipe decodes the files itself, in datasets.map.
    cfg = compose_config(job, trim_db=None)
    corpus = prepare(job["root"], job["cache"], progress=False)
    split = make_split(corpus.clips, "random", job["seed"], test_size=cfg.data.test_size)
    group_norm = uses_group_norm(load_encoder_config(cfg.model.encoder, cfg.model.encoder_config))
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16_000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=not group_norm,  # as transformers' own wav2vec2 extractors
    )

    def preprocess(batch: dict) -> dict:
        # decoded and resampled as ser does (soundfile, torchaudio), normalised by the feature extractor
        speech = [audio.load(path, normalize=False) for path in batch["path"]]
        features = feature_extractor(speech, sampling_rate=16_000)
        features["labels"] = batch["label"]
        return features

    files = {
        "path": [str(Path(job["root"]) / corpus.clips[i]["key"]) for i in split["train"]],
        "label": [corpus.clips[i]["label"] for i in split["train"]],
    }
    # Before the model is built: forking worker processes after torch has run its thread pool can deadlock.
    started = time.perf_counter()
    train_dataset = Dataset.from_dict(files).map(
        preprocess,
        batched=True,
        batch_size=100,
        num_proc=min(4, len(os.sched_getaffinity(0))),
        remove_columns=["path", "label"],
    )
    prepare_seconds = time.perf_counter() - started

    cfg, module = initial_module(job)
    config = hf_config(module.model, id2label=dict(enumerate(EMOTIONS)))
    model = AutoModelForAudioClassification.from_config(config)
    model.load_state_dict(hf_state_dict(module.model))
    if cfg.model.freeze_feature_encoder:
        model.freeze_feature_encoder()
    result = {
        "initial_weights": fingerprint(module.state_dict()),
        "attention": model.config._attn_implementation,
        "prepare_seconds": prepare_seconds,
        "train_keys": keys_digest(corpus.clips[i]["key"] for i in split["train"]),
    }
    del module

    def pad_to_longest(features: list[dict]) -> dict:
        """The recipe's collator, plus each clip's length for the meter (taken out before the model)."""
        batch = feature_extractor.pad(
            [{"input_values": f["input_values"]} for f in features], padding=True, return_tensors="pt"
        )
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        batch["input_lengths"] = torch.tensor([len(f["input_values"]) for f in features])
        return batch

    meter = LoopMeter(
        frames_of=model.wav2vec2._get_feat_extract_output_lengths,
        contents=lambda batch: (batch["input_lengths"], batch["input_values"].shape[1], batch["labels"]),
        turns=turns,
        profile=LoopProfile(model) if job["profile"] else None,
    )

    class Meter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            meter.start()

        def on_step_end(self, args, state, control, **kwargs):
            meter.optimizer_step_done(state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            meter.stop()

    class MeteredTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            inputs.pop("input_lengths")
            meter.trained()
            return super().training_step(model, inputs, num_items_in_batch)

    precision = job["precision"]
    args = TrainingArguments(
        output_dir=str(Path(job["scratch"]) / "recipe-trainer"),
        per_device_train_batch_size=job["batch_size"],
        gradient_accumulation_steps=job["accumulation"],
        max_steps=job["steps"],
        learning_rate=job["lr"],
        optim="adamw_torch",  # with weight_decay 0 this is the recipe's Adam
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=1.0,
        fp16=precision == "16-mixed",
        bf16=precision == "bf16-mixed",
        train_sampling_strategy="random",  # no length grouping (group_by_length=False in the transformers of 2021)
        dataloader_num_workers=0,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=job["seed"],
    )
    trainer = MeteredTrainer(
        model=model, args=args, train_dataset=train_dataset, data_collator=pad_to_longest, callbacks=[Meter()]
    )
    with timed_fetches(meter):
        trainer.train()
    result.update(meter.result(), optimizer_steps=trainer.state.global_step, **peak_memory())
    out = Path(job["scratch"]) / "recipe"
    trainer.save_model(str(out))
    feature_extractor.save_pretrained(out)
    result["model"] = str(out)
    return result


# --- running the sides and reporting ---------------------------------------------------------------


def run_side(side: str, job: dict, turns: Turns) -> dict:
    """One side, in this process."""
    job = {**job, "side": side}
    if side == "recipe":
        return run_recipe(job, turns)
    variant = job["variants"][int(side[len(VARIANT) :])].split() if side.startswith(VARIANT) else []
    if side.startswith(VARIANT):
        return run_ser(job, turns, trim_db=None, variant=tuple(variant))
    if side == "ser-onednn":
        return run_ser(job, turns, trim_db=None, variant=("cpu_onednn=true",))
    return run_ser(job, turns, trim_db=job["trim_db"] if side == "ser-trim" else None)


def take_turns(sides: list[str], job: dict, scratch: Path, names: dict[str, str], label: str = "") -> dict[str, dict]:
    """Run every side in a process of its own, the sides taking turns (see :class:`Turns`); what each measured."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    job_file = scratch / "job.json"
    job_file.write_text(json.dumps(job))
    processes = {}
    for side in sides:
        control_read, control_write = os.pipe()
        status_read, status_write = os.pipe()
        command = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--job",
            str(job_file),
            "--result",
            str(scratch / f"{side}.json"),
            "--control",
            str(control_read),
            "--status",
            str(status_write),
        ]
        process = subprocess.Popen(command, pass_fds=(control_read, status_write))
        os.close(control_read)
        os.close(status_write)
        processes[side] = (process, os.fdopen(control_write, "w"), os.fdopen(status_read))

    def report(side: str) -> int | None:
        """Steps the side has done at its pause, or None when it has ended (having written its result)."""
        process, _, status = processes[side]
        line = status.readline()
        if line:
            return int(line)
        if process.wait() != 0:
            for other, _, _ in processes.values():
                other.kill()
            raise SystemExit(
                f"error: the {side} side failed (exit status {process.returncode}); its messages are above"
            )
        return None

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        tasks = {side: progress.add_task(f"{label}training: {names[side]}", total=job["steps"]) for side in sides}
        running = [side for side in sides if report(side) is not None]  # each waits, imports done, for its first turn
        while running:
            for side in list(running):
                control = processes[side][1]
                control.write("go\n")
                control.flush()
                steps_done = report(side)
                if steps_done is None:
                    running.remove(side)
                    steps_done = job["steps"]
                progress.update(tasks[side], completed=steps_done)
    return {side: json.loads((scratch / f"{side}.json").read_text()) for side in sides}


def validation_scores(job: dict, result: dict) -> dict:
    """WA and UA of a side's final model on the validation clips (prepared as it expects), scored by ser.evaluate's code."""
    from ser.data.prepare import PrepareSettings, prepare
    from ser.data.ravdess import EMOTIONS
    from ser.data.splits import make_split
    from ser.evaluate import compute_metrics, score_clips
    from ser.inference import load_model

    scorer = load_model(result["model"])
    corpus = prepare(job["root"], job["cache"], PrepareSettings(trim_db=scorer.trim_db), progress=False)
    val = make_split(corpus.clips, "random", job["seed"])["val"]
    probabilities = score_clips(scorer, corpus, val, batch_size=job["batch_size"], progress=False)
    true = [corpus.clips[i]["label"] for i in val]
    metrics = compute_metrics(true, probabilities, list(EMOTIONS), stage="val")
    return {"val_acc": metrics["val/acc"], "val_uar": metrics["val/uar"], "val_clips": len(val)}


def duration_baseline(job: dict) -> float:
    """Validation WA of a logistic regression on each clip's duration alone: what length, without the audio, predicts."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from ser.data.prepare import prepare
    from ser.data.splits import make_split

    corpus = prepare(job["root"], job["cache"], progress=False)
    split = make_split(corpus.clips, "random", job["seed"])
    seconds = corpus.lengths()[:, None] / corpus.sample_rate
    labels = np.array([clip["label"] for clip in corpus.clips])
    model = LogisticRegression(max_iter=1000).fit(seconds[split["train"]], labels[split["train"]])
    return float((model.predict(seconds[split["val"]]) == labels[split["val"]]).mean())


def side_names(job: dict) -> dict[str, str]:
    return {
        "ser": "ser",
        "recipe": "recipe (`transformers.Trainer`)",
        "ser-trim": f"ser, `data.trim_db={job['trim_db']:g}`",
        "ser-onednn": "ser, oneDNN on",
        **{f"{VARIANT}{i}": f"ser, `{overrides}`" for i, overrides in enumerate(job["variants"])},
    }


def combine(runs: list[dict]) -> dict:
    """One side's results over several seeds: the mean of every figure, with each seed's accuracy kept."""
    import statistics

    combined = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):  # the integers (clips, steps, parameters) are the same for every seed
            combined[key] = statistics.fmean(run[key] for run in runs)
    for key in ("val_acc", "val_uar"):
        combined[f"{key}_runs"] = [run[key] for run in runs]
        combined[f"{key}_std"] = statistics.stdev(combined[f"{key}_runs"]) if len(runs) > 1 else 0.0
    combined["peak_rss_mib"] = max(run["peak_rss_mib"] for run in runs)
    combined["prepare_seconds"] = runs[0]["prepare_seconds"]  # later seeds find the cache warm
    return combined


def _spread(result: dict, key: str) -> str:
    if len(result[f"{key}_runs"]) == 1:
        return f"{result[key]:.1%}"
    return f"{result[key]:.1%} ± {result[f'{key}_std']:.1%}"


def table(results: dict[str, dict], names: dict[str, str]) -> str:
    recipe = results["recipe"]
    sides = list(results)
    rows = [
        ("training throughput (clips/s)", lambda r: f"{r['clips_per_second']:.2f}"),
        ("throughput / recipe's", lambda r: f"{r['clips_per_second'] / recipe['clips_per_second']:.2f}x"),
        ("padded encoder frames", lambda r: f"{r['padded_frames']:.1%}"),
        ("loop time waiting for data", lambda r: f"{r['data_wait']:.1%}"),
        ("emotions per batch, mean", lambda r: f"{r['emotions_per_batch']:.2f}"),
        ("peak memory, process RSS (MiB), largest", lambda r: f"{r['peak_rss_mib']:.0f}"),
    ]
    if "peak_gpu_mib" in recipe:
        rows.append(("peak GPU memory (MiB)", lambda r: f"{r['peak_gpu_mib']:.0f}"))
    rows += [
        ("validation accuracy (WA)", lambda r: _spread(r, "val_acc")),
        ("validation UA", lambda r: _spread(r, "val_uar")),
        ("validation WA, each seed", lambda r: " / ".join(f"{value:.1%}" for value in r["val_acc_runs"])),
        ("training loop (s)", lambda r: f"{r['loop_seconds']:.1f}"),
        ("the loop's CPU time / (wall time x cores)", lambda r: f"{r['cpu_share']:.0%}"),
        ("clips trained on", lambda r: f"{r['clips']:.0f}"),
        (
            "preparation (s), first seed, cold for the first side of its settings",
            lambda r: f"{r['prepare_seconds']:.1f}",
        ),
    ]
    lines = ["| | " + " | ".join(names[s] for s in sides) + " |", "| --- |" + " --- |" * len(sides)]
    lines += [f"| {label} | " + " | ".join(cell(results[s]) for s in sides) + " |" for label, cell in rows]
    return "\n".join(lines)


def accuracy_verdict(side: dict, recipe: dict) -> str:
    """Validation WA of ``side`` against the recipe's, seed by seed (the sides of a seed share weights and split)."""
    import statistics

    differences = [a - b for a, b in zip(side["val_acc_runs"], recipe["val_acc_runs"])]
    mean = statistics.fmean(differences)
    if len(differences) == 1:
        return f"validation accuracy {side['val_acc']:.1%} against {recipe['val_acc']:.1%} ({'equal or better' if mean >= 0 else 'lower'}, one seed)"
    error = statistics.stdev(differences) / len(differences) ** 0.5
    if mean >= 0:
        verdict = "equal or better"
    elif mean + 2 * error >= 0:
        verdict = "lower on average, by less than two standard errors: within the seeds' spread"
    else:
        verdict = "lower, by more than two standard errors"
    return (
        f"validation accuracy {side['val_acc']:.1%} against {recipe['val_acc']:.1%}, mean of {len(differences)} seeds; "
        f"difference {mean * 100:+.1f} points, standard error {error * 100:.1f} ({verdict})"
    )


def verdicts(results: dict[str, dict], names: dict[str, str]) -> str:
    recipe = results["recipe"]
    lines = []
    for side, r in results.items():
        if side == "recipe":
            continue
        ratio = r["clips_per_second"] / recipe["clips_per_second"]
        lines.append(
            f"- {names[side]}: throughput {ratio:.2f}x the recipe's (target 1.5x: {'met' if ratio >= 1.5 else 'missed'}), "
            f"{accuracy_verdict(r, recipe)}; "
            f"padded frames {r['padded_frames']:.1%} (target under 5%: {'met' if r['padded_frames'] < 0.05 else 'missed'}), "
            f"data waiting {r['data_wait']:.1%} (target under 5%: {'met' if r['data_wait'] < 0.05 else 'missed'})"
        )
    return "\n".join(lines)


def profile_tables(results: dict[str, dict], names: dict[str, str]) -> str:
    """Where each side's loop time went (regions), and the ops that took most of it."""
    sides = [side for side in results if "profile" in results[side]]
    profiles = {side: results[side]["profile"] for side in sides}
    header = "| " + " | ".join(names[side] for side in sides) + " |"
    lines = ["| where the loop's time went " + header, "| --- |" + " --- |" * len(sides)]
    for region in profiles[sides[0]]["regions"]:
        cells = [
            f"{p['regions'][region]:.1f} s ({p['regions'][region] / p['wall_seconds']:.0%})" for p in profiles.values()
        ]
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    lines.append("| the whole loop | " + " | ".join(f"{p['wall_seconds']:.1f} s" for p in profiles.values()) + " |")
    lines += [
        "",
        "Ops by their own time (without the ops they call), as a share of the loop:",
        "",
        "| | " + header[2:],
        "| --- |" + " --- |" * len(sides),
    ]
    for rank in range(PROFILE_TOP_OPS):
        cells = []
        for p in profiles.values():
            op = p["top"][rank] if rank < len(p["top"]) else None
            cells.append(f"`{op['op']}` {op['self_seconds'] / p['wall_seconds']:.0%}" if op else "")
        lines.append(f"| {rank + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthetic_corpus(scratch: Path, actors: int) -> Path:
    from ser.data.synth import synthesize_corpus

    return synthesize_corpus(scratch / "ravdess-synth", actors=actors, seed=0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--encoder-config",
        default="tiny",
        choices=list(ENCODER_CONFIGS),
        help="encoder sizes (default: tiny, the demo's)",
    )
    parser.add_argument(
        "--root", type=Path, help="a RAVDESS-format corpus (default: a fresh synthetic 24-actor corpus)"
    )
    parser.add_argument(
        "--steps", type=int, help="optimizer steps per side (default: 288, two epochs of the synthetic corpus)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="the recipe's: 4")
    parser.add_argument("--accumulation", type=int, default=2, help="gradient accumulation, the recipe's: 2")
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="learning rate (default 1e-3: the demo's for an encoder trained from scratch)",
    )
    parser.add_argument(
        "--seeds",
        default=DEFAULT_SEEDS,
        help=f"comma-separated seeds of the split, the initial weights and the batches, one run of every side each (default {DEFAULT_SEEDS})",
    )
    parser.add_argument("--precision", help="default: 16-mixed on CUDA (the recipe's fp16), 32-true on CPU")
    parser.add_argument("--trim-db", type=float, default=-40.0, help="data.trim_db of the third side (default -40)")
    parser.add_argument(
        "--sides",
        default=DEFAULT_SIDES,
        help=f"sides to run, of {', '.join(SIDES)} (default {DEFAULT_SIDES}); ser-onednn is ser with torch's oneDNN convolutions on",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="one more ser side with these Hydra overrides (space-separated), e.g. 'data.bucket_batches=4'; repeatable",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile each side with torch.profiler (a slower run, first seed only)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 actors, 4 steps")
    parser.add_argument(
        "--output", type=Path, default=BENCHMARKS_MD, help="the benchmarks file to write (default: BENCHMARKS.md)"
    )
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--control", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--status", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.side:
        result = run_side(args.side, json.loads(args.job.read_text()), Turns(args.control, args.status))
        args.result.write_text(json.dumps(result))
        return

    missing = [name for name in ("datasets", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"error: the recipe's side needs {' and '.join(missing)}: install them with pip install -e '.[bench]'"
        )
    import torch

    steps = args.steps or (4 if args.quick else 288)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.quick or args.profile:
        seeds = seeds[:1]  # a smoke run; the profiler's shares do not need the seeds' spread
    precision = args.precision or ("16-mixed" if torch.cuda.is_available() else "32-true")
    with tempfile.TemporaryDirectory(prefix="ser-bench-train-") as scratch_dir:
        scratch = Path(scratch_dir)
        root = args.root or synthetic_corpus(scratch, actors=2 if args.quick else 24)
        job = {
            "root": str(root),
            "cache": str(scratch / "cache"),
            "encoder_config": args.encoder_config,
            "steps": steps,
            "batch_size": args.batch_size,
            "accumulation": args.accumulation,
            "lr": args.lr,
            "precision": precision,
            "trim_db": args.trim_db,
            "profile": args.profile,
            "variants": args.variant,
        }
        sides = args.sides.split(",")
        if "recipe" not in sides or "ser" not in sides or not set(sides) <= set(SIDES):
            raise SystemExit(f"error: --sides {args.sides}: give ser, recipe and any of {', '.join(SIDES[2:])}")
        sides += [f"{VARIANT}{i}" for i in range(len(args.variant))]
        names = side_names(job)
        runs = []  # per seed: side -> result
        baselines = []  # per seed: validation WA of the clip's duration alone
        for seed in seeds:
            seed_job = {**job, "seed": seed, "scratch": str(scratch / f"seed-{seed}")}
            Path(seed_job["scratch"]).mkdir()
            results = take_turns(sides, seed_job, Path(seed_job["scratch"]), names, f"seed {seed}: ")
            for result in results.values():
                result.update(validation_scores(seed_job, result))
            for check in ("initial_weights", "train_keys"):
                values = {r[check] for r in results.values()}
                if len(values) != 1:
                    raise SystemExit(
                        f"error: the sides differ in {check.replace('_', ' ')} ({values}); the comparison would be unfair"
                    )
            runs.append(results)
            baselines.append(duration_baseline(seed_job))

    results = {side: combine([run[side] for run in runs]) for side in sides}
    steps_done = {r["optimizer_steps"] for run in runs for r in run.values()}
    recipe, ser = results["recipe"], results["ser"]
    weights = ", ".join(f"{seed}: {run['recipe']['initial_weights']}" for seed, run in zip(seeds, runs))
    body = f"""`{command_line("train.py")}`: encoder `{args.encoder_config}` ({ser["parameters"] / 1e6:.2f} M parameters, random initial weights, the same on every side for a seed: {weights}), {"synthetic corpus of" if args.root is None else f"{root},"} {ser["corpus_clips"]} clips, random stratified 80/20 split ({recipe["val_clips"]} validation clips), batch {args.batch_size} x accumulation {args.accumulation}, Adam lr {args.lr:g} with linear decay, {", ".join(str(s) for s in sorted(steps_done))} optimizer steps per side, precision {precision}, attention {recipe["attention"]}. Seeds {", ".join(map(str, seeds))} (split, initial weights, batches): every side ran once per seed, and each figure is the mean over the seeds; accuracy also shows the standard deviation and each seed's value.

{table(results, names)}

{verdicts(results, names)}
- Clip duration alone, without the audio (a logistic regression on each clip's length in seconds): validation accuracy {sum(baselines) / len(baselines):.1%}, each seed {" / ".join(f"{b:.1%}" for b in baselines)}. Length goes with emotion in this corpus; read the accuracies above against it.
"""
    if args.profile:
        body += (
            f"\nUnder torch.profiler (which slows every side), seed {seeds[0]}:\n\n{profile_tables(runs[0], names)}\n"
        )
    print(body)
    print(f"written to {write_section('train profile' if args.profile else 'train', body, args.output)}")


if __name__ == "__main__":
    main()

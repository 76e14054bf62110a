"""What the tests share: small RAVDESS-format corpora, tiny models and checkpoints, seconds-long training
configs, and the one way to run a new Python interpreter."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ser.config import CONF_DIR, register_configs
from ser.data.ravdess import EMOTION_CODES
from ser.module import SERModule

REPO = Path(__file__).resolve().parent.parent
TRAIN_PY = REPO / "train.py"
RAVDESS_RATE = 48_000

# A wav2vec 2.0 small enough that a training step takes milliseconds; layer norm, so masks apply.
TINY_ENCODER = {
    "model_type": "wav2vec2",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32, 32, 32],
    "conv_kernel": [10, 3, 3],
    "conv_stride": [5, 2, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
}


def clip_names(actors) -> list[str]:
    """Every speech clip name RAVDESS has for these actors (60 per actor)."""
    names = []
    for actor, emotion, intensity, statement, repetition in itertools.product(
        actors, EMOTION_CODES, (1, 2), (1, 2), (1, 2)
    ):
        if emotion == 1 and intensity == 2:  # neutral has no strong intensity
            continue
        names.append(f"03-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.wav")
    return names


def write_noise_corpus(root: Path, actors=(1, 2, 3, 4), seed: int = 0, min_seconds=0.2, max_seconds=0.7) -> Path:
    """A RAVDESS-format tree of short noise clips of varied lengths (48 kHz, 16-bit, mono).

    For tests of the data pipeline, where content does not matter but format, names and lengths do.
    """
    rng = np.random.default_rng(seed)
    for name in clip_names(actors):
        actor = int(name[-6:-4])
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        frames = int(rng.uniform(min_seconds, max_seconds) * RAVDESS_RATE)
        sf.write(folder / name, (rng.standard_normal(frames) * 0.1).astype(np.float32), RAVDESS_RATE, subtype="PCM_16")
    return root


def tiny_run_overrides(corpus: Path, cache: Path, *extra: str, run_dir: Path | None = None) -> list[str]:
    """``train.py`` overrides for seconds-long runs: the demo shrunk to the tiny encoder on a noise corpus
    of 6 actors (speaker split, 2 validation and 2 test actors), CSV logger, no progress bar.
    ``extra`` overrides come next and ``run_dir`` (none in a multirun) last, so a caller can swap it."""
    encoder = json.dumps(TINY_ENCODER, separators=(",", ":")).replace('"', "")  # a Hydra dict literal
    return [
        "experiment=demo",
        f"data.root={corpus}",
        "data.synthesize_actors=null",
        f"data.cache_dir={cache}",
        "data.split=speaker",
        "data.val_actors=2",
        "data.test_actors=2",
        "data.max_seconds=0.5",
        f"model.encoder_config={encoder}",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        *extra,
        *([f"run_dir={run_dir}"] if run_dir else []),
    ]


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The project's config with ``overrides``, composed as ``train.py`` composes it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def tiny_module(seed: int = 0, encoder: dict | None = None, **kwargs) -> SERModule:
    """A random tiny SERModule in eval mode."""
    torch.manual_seed(seed)
    module = SERModule(
        encoder=None,
        pretrained=False,
        encoder_config={**TINY_ENCODER, **(encoder or {})},
        scheduler="constant",
        **kwargs,
    )
    # A fresh head gives nearly equal logits; larger weights make the classes distinct, so that
    # comparisons of predicted labels are not decided by rounding.
    with torch.no_grad():
        module.model.classifier.weight.normal_(std=1.0)
    return module.eval()


def save_checkpoint(module: SERModule, path: Path) -> Path:
    """A Lightning checkpoint of ``module``, as training writes them (without training)."""
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def python_command(args: Sequence[str | Path], env: Mapping[str, str | None] = ()) -> tuple[list[str], dict]:
    """``python ARGS`` with this interpreter, and the environment every test's child process gets.

    The child imports ``ser`` from this source tree, stays offline, logs to W&B offline only and uses one
    intra-op thread (the tests share two cores). ``env`` adds variables; a value of None removes one.
    """
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    child = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    child.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=pythonpath
    )
    for name, value in dict(env).items():
        if value is None:
            child.pop(name, None)
        else:
            child[name] = value
    return [sys.executable, *map(str, args)], child


def run_python(
    args: Sequence[str | Path], cwd: Path, env: Mapping[str, str | None] = (), timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in ``cwd`` to the end (see :func:`python_command`); output is captured as text."""
    command, child = python_command(args, env)
    return subprocess.run(command, cwd=cwd, env=child, capture_output=True, text=True, timeout=timeout)

"""Builders of small RAVDESS-format corpora and of seconds-long training configs for the tests."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from ser.data.ravdess import EMOTION_CODES

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

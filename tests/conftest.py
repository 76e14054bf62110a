"""Shared fixtures: small RAVDESS-format corpora, a tiny composed training config, and isolation from the
network and from W&B."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

# huggingface_hub reads these once, when it is first imported: set them before any test imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from .helpers import compose_config, tiny_run_overrides, write_noise_corpus  # noqa: E402

# One short epoch: enough batches that every stage (fit, validate, test) runs and writes its outputs.
TINY_TRAINING = (
    "data.batch_size=8",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may reach the network, log to a W&B account, or write outside its own directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def noise_corpus_original(tmp_path_factory) -> Path:
    """A noise corpus of 4 actors, written once; tests that may change it take ``noise_corpus``."""
    return write_noise_corpus(tmp_path_factory.mktemp("noise") / "ravdess")


@pytest.fixture
def noise_corpus(noise_corpus_original, tmp_path) -> Path:
    """The test's own copy of ``noise_corpus_original`` (new files, new mtimes), free to spoil."""
    return Path(shutil.copytree(noise_corpus_original, tmp_path / "ravdess", copy_function=shutil.copy))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A noise corpus of 6 actors for the tests that train (read only: runs cache it elsewhere)."""
    return write_noise_corpus(tmp_path_factory.mktemp("corpus") / "ravdess", actors=(1, 2, 3, 4, 5, 6))


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """The preparation cache of ``corpus_dir``, shared by every run: the corpus is decoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_overrides(corpus_dir, corpus_cache) -> list[str]:
    """``train.py`` overrides for a run of seconds (see ``tiny_run_overrides``), one short epoch, no run_dir."""
    return tiny_run_overrides(corpus_dir, corpus_cache, *TINY_TRAINING)


@pytest.fixture(scope="session")
def cfg_train_global(corpus_dir, corpus_cache) -> DictConfig:
    """The config of ``tiny_overrides``, composed once for the session."""
    return compose_config(tiny_run_overrides(corpus_dir, corpus_cache, *TINY_TRAINING))


@pytest.fixture
def cfg_train(cfg_train_global, tmp_path) -> DictConfig:
    """A copy of the tiny config of its own, whose run directory is ``tmp_path / "run"``."""
    cfg = copy.deepcopy(cfg_train_global)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    return cfg

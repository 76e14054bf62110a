"""Shared fixtures: small RAVDESS-format corpora, and isolation from the network and from W&B."""

from __future__ import annotations

import os
from pathlib import Path

# huggingface_hub reads these once, when it is first imported: set them before any test imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

from .helpers import write_noise_corpus  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may reach the network, log to a W&B account, or write outside its own directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def noise_corpus(tmp_path) -> Path:
    return write_noise_corpus(tmp_path / "ravdess")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A noise corpus of 6 actors for the tests that train (read only: runs cache it elsewhere)."""
    return write_noise_corpus(tmp_path_factory.mktemp("corpus") / "ravdess", actors=(1, 2, 3, 4, 5, 6))

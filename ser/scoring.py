"""What prediction and evaluation need of a model: the :class:`Scorer` protocol.

Three kinds of model implement it: a checkpoint of this project
(:class:`ser.inference.CheckpointClassifier`), a Hugging Face audio-classification model
(:class:`ser.hub.HFClassifier`) and an ONNX export (:class:`ser.onnx_runtime.OnnxClassifier`).
:func:`ser.inference.load_model` gives the right one for a path or a Hub name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Scorer(Protocol):
    """A model to score waveforms with, and what its inputs and outputs are.

    ``logits(waveforms (B, T) float32, attention_mask (B, T) bool | None) -> (B, C)`` float32 on the
    CPU, C = ``len(labels)``. Waveforms are at ``sample_rate``, cut of leading and trailing silence
    when ``trim_db`` is set (as in training, see :func:`ser.data.audio.trim_silence`) and, when
    ``normalize``, zero mean and unit variance per clip (:func:`ser.data.audio.to_model_input`
    prepares them so). With ``uses_attention_mask`` False the model must only get batches of
    equal-length clips (padding would change its results), and gets no mask. ``min_samples`` is
    the shortest clip it can score; ``name`` names it in reports. Call ``logits`` inside
    ``with scorer.inference():`` (eval mode, no autograd).
    """

    name: str
    labels: list[str]
    sample_rate: int
    normalize: bool
    trim_db: float | None
    uses_attention_mask: bool
    min_samples: int

    def logits(self, waveforms: Tensor, attention_mask: Tensor | None = None) -> Tensor: ...

    def inference(self) -> AbstractContextManager[None]: ...


def module_device(module: nn.Module) -> torch.device:
    """Where a module's inputs go: the device of its parameters (the CPU when it has none)."""
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def module_logits(module: nn.Module, waveforms: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``module(waveforms, attention_mask)``, the inputs moved to the module's device: logits (B, C) float32, CPU."""
    device = module_device(module)
    mask = None if attention_mask is None else attention_mask.to(device)
    return module(waveforms.to(device), mask).detach().float().cpu()


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode and ``torch.inference_mode`` for the duration; the module's mode is restored after."""
    training = module.training
    if training:
        module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if training:
            module.train()

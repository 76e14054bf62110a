"""Scoring with an ONNX export of a checkpoint (``ser export --format onnx``), run by onnxruntime.

``onnx`` and ``onnxruntime`` come with the ``onnx`` extra (``pip install -e ".[onnx]"``); without
them :func:`import_onnx` raises a one-line error that names it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .errors import UserError, first_line
from .models.classifier import apply_at_true_lengths, check_batch
from .models.encoder import EncoderError

ONNX_FILE = "model.onnx"  # the file's name inside a folder written by ``ser export --format onnx``


def import_onnx(name: str, error: type[UserError] = UserError) -> ModuleType:
    """The package ``onnx`` or ``onnxruntime``, or a one-line ``error`` saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise error(
            f"{name} is not installed, and ONNX export and scoring need it: "
            'pip install -e ".[onnx]" (or pip install onnx onnxruntime)'
        ) from None


def onnx_file(path: str | Path) -> Path | None:
    """The ONNX model that ``path`` means: a ``.onnx`` file, or a folder holding ``model.onnx``; else None."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".onnx":
        return path
    if path.is_dir() and (path / ONNX_FILE).is_file() and not (path / "config.json").is_file():
        return path / ONNX_FILE
    return None


class OnnxClassifier:
    """A ser ONNX export run with onnxruntime: a :class:`ser.scoring.Scorer`.

    ``labels``, ``sample_rate``, ``normalize``, ``trim_db``, ``uses_attention_mask`` and
    ``min_samples`` come from the file's metadata (files exported before ``trim_db`` and
    ``min_samples`` were recorded get None and 1). Calling it, ``(waveforms (B, T), attention_mask
    (B, T) bool/int | None) -> logits (B, C)``, gives a float32 tensor on the waveforms' device;
    waveforms as :func:`ser.data.audio.to_model_input` gives them, zero padded. When the model takes
    no mask (group-norm encoders) clips are scored at their true lengths, clips of equal length
    together.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        ort = import_onnx("onnxruntime", EncoderError)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise EncoderError(f"ONNX file '{path}' does not exist: give a file written by `ser export --format onnx`")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise EncoderError(f"'{path}' is not a readable ONNX model: {first_line(err)[:200]}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.metadata = {key: json.loads(value) for key, value in metadata.items()}
            self.labels = [str(label) for label in self.metadata["labels"]]
            self.sample_rate = int(self.metadata["sample_rate"])
            self.normalize = bool(self.metadata["normalize"])
        except (KeyError, ValueError):
            raise EncoderError(
                f"'{path}' has no ser metadata (labels, sample_rate, normalize): "
                "export it with `ser export --format onnx`"
            ) from None
        trim_db = self.metadata.get("trim_db")
        self.trim_db = None if trim_db is None else float(trim_db)
        self.uses_attention_mask = bool(self.metadata.get("uses_attention_mask", True))
        self.min_samples = int(self.metadata.get("min_samples", 1))
        self.name = self.path.parent.name if self.path.name == ONNX_FILE and self.path.parent.name else self.path.stem
        self._input_names = [i.name for i in self.session.get_inputs()]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def _run(self, clips: Tensor, clip_mask: Tensor | None = None) -> Tensor:
        if clip_mask is None:
            clip_mask = torch.ones(clips.shape, dtype=torch.long)
        feeds = {
            "waveforms": np.ascontiguousarray(clips.numpy()),
            "attention_mask": np.ascontiguousarray(clip_mask.numpy()),
        }
        (logits,) = self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self._input_names})
        return torch.from_numpy(logits)

    def __call__(self, waveforms: Tensor | np.ndarray, attention_mask: Tensor | np.ndarray | None = None) -> Tensor:
        """Logits (B, C) float32 for waveforms (B, T), attention_mask (B, T) or None (every sample real)."""
        waveforms = torch.as_tensor(waveforms)
        attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask)
        check_batch(waveforms, attention_mask)
        device = waveforms.device
        clips = waveforms.detach().to("cpu", torch.float32)
        mask = None if attention_mask is None else attention_mask.detach().to("cpu", torch.long)
        if self.uses_attention_mask:
            logits = self._run(clips, mask)
        else:
            logits = apply_at_true_lengths(self._run, clips, mask)
        return logits.to(device)

    def logits(self, waveforms: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) float32 on the CPU; see :class:`ser.scoring.Scorer`."""
        return self(waveforms, attention_mask).cpu()

    def inference(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to switch: an ONNX session has no training mode and no autograd."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return (
            f"OnnxClassifier(path='{self.path}', labels={self.labels}, sample_rate={self.sample_rate}, "
            f"normalize={self.normalize}, trim_db={self.trim_db})"
        )

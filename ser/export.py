"""Exporting a trained checkpoint: a Hugging Face model directory, or an ONNX file.

    export_hf(checkpoint, out)     config.json, model.safetensors, preprocessor_config.json, README.md:
                                   ``transformers.pipeline("audio-classification", model=out)`` loads
                                   it without ser and gives the same probabilities
    export_onnx(checkpoint, out)   one .onnx file (waveforms, attention_mask) -> logits, with the
                                   labels and preprocessing in its metadata; OnnxClassifier runs it

Only head ``hf`` with mean pooling is transformers' ``<Model>ForSequenceClassification``; every head
and pooling exports to ONNX. Both exports check their result against the checkpoint's PyTorch
model before writing `out`, and write it atomically (a temporary sibling, then a rename), so `out`
is either complete or untouched. Checkpoints are unpickled: export only checkpoints you trust.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .hub import score_at_true_lengths
from .models.classifier import SpeechClassifier, hf_config, hf_state_dict
from .models.encoder import EncoderError, uses_group_norm

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max abs difference of logits between the export and the checkpoint's model


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported as asked; the message is one line saying why and what to do."""


# --- shared -------------------------------------------------------------------------------------------


def _load_module(checkpoint: str | Path):
    from .module import SERModule

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ExportError(
            f"checkpoint '{checkpoint}' does not exist: give a .ckpt file written by training (e.g. checkpoints/best.ckpt)"
        )
    try:
        # weights_only=False: a trainer's checkpoint holds more than tensors (callback and loop states)
        module = SERModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"'{checkpoint}' is not a ser checkpoint ({type(err).__name__}: {first})") from None
    return module.eval()


def _check_free(out: Path, overwrite: bool, directory: bool) -> None:
    if out.exists() and out.is_dir() != directory:
        what = "a file" if out.is_file() else "a directory"
        raise ExportError(f"'{out}' is {what}: give a path for the {'model directory' if directory else '.onnx file'}")
    if out.exists() and not overwrite:
        if out.is_dir() and not any(out.iterdir()):
            return  # an empty directory is replaced as if it were absent
        raise ExportError(f"'{out}' already exists: choose another output or pass overwrite=True")


def _replace(tmp: Path, out: Path) -> None:
    """Put `tmp` at `out` by renames only, so `out` is never half written."""
    if not out.exists() and not out.is_symlink():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _test_lengths(classifier: SpeechClassifier, sample_rate: int) -> list[int]:
    """Clip lengths (samples) for checking an export: a few tenths of a second, all long enough for a frame."""
    config = classifier.encoder.config
    need = 1
    for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
        need = (need - 1) * stride + kernel
    return [max(need + extra, int(seconds * sample_rate)) for seconds, extra in ((0.6, 9), (0.45, 5), (0.3, 1))]


def _padded_batch(lengths: list[int], seed: int) -> tuple[Tensor, Tensor]:
    """Random clips (B, T) float32 zero padded to the longest, and their mask (B, T) int64."""
    gen = torch.Generator().manual_seed(seed)
    total = max(lengths)
    waveforms = torch.zeros(len(lengths), total)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for i, n in enumerate(lengths):
        waveforms[i, :n] = torch.randn(n, generator=gen)
        mask[i, :n] = 1
    return waveforms, mask


# --- Hugging Face ---------------------------------------------------------------------------------------


def _hf_exportable(module) -> None:
    model: SpeechClassifier = module.model
    if model.head != "hf" or model.pooling_name != "mean":
        raise ExportError(
            f"head {model.head!r} with {model.pooling_name!r} pooling cannot be exported to transformers "
            "(only head 'hf' with mean pooling is <Model>ForSequenceClassification); "
            "ONNX export (export_onnx) works for every head and pooling"
        )


def _find_metrics(checkpoint: Path) -> tuple[dict | None, Path | None]:
    # A run directory keeps metrics.json beside checkpoints/: see ser.train
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        path = folder / "metrics.json"
        if path.is_file():
            try:
                return json.loads(path.read_text()), path
            except (OSError, ValueError):
                log.warning("could not read %s; the model card leaves the metrics out", path)
                return None, None
    return None, None


def _model_card(module, checkpoint: Path, out_name: str, architecture: str) -> str:
    labels = list(module.hparams.labels)
    if module.hparams.get("trim_db") is not None:
        # Wav2Vec2FeatureExtractor has no such step, so transformers' pipeline scores whole clips.
        log.warning(
            "%s was trained on clips with the silence trimmed (data.trim_db=%s); transformers' pipeline does not trim, "
            "so trim before scoring with it, or score with `ser predict`, which does",
            checkpoint,
            module.hparams.trim_db,
        )
    encoder_config = module.hparams.encoder_config or {}
    base = encoder_config.get("_name_or_path") or ""
    base_is_hub = bool(base) and not base.startswith(("/", ".", "~")) and base.count("/") == 1
    sample_rate = module.hparams.sample_rate
    normalize = module.hparams.normalize
    metrics, metrics_path = _find_metrics(checkpoint)

    lines = ["---", "library_name: transformers", "pipeline_tag: audio-classification"]
    if base_is_hub:
        lines.append(f"base_model: {base}")
    lines += ["tags:", "- audio-classification", "- speech-emotion-recognition", "- ser", "---", ""]
    lines += [f"# {out_name}: speech emotion recognition", ""]
    lines.append(
        f"A `{architecture}` fine-tuned with ser (speech emotion recognition with PyTorch Lightning) "
        + (f"from `{base}` " if base else "")
        + f"to classify speech into {len(labels)} emotions. Exported from `{checkpoint.name}`."
    )
    lines += ["", "## Labels", "", "| id | label |", "| --- | --- |"]
    lines += [f"| {i} | {label} |" for i, label in enumerate(labels)]
    lines += [
        "",
        "## Input",
        "",
        f"Mono audio at {sample_rate} Hz"
        + (
            ", normalised per clip to zero mean and unit variance (the saved feature extractor does this)."
            if normalize
            else "."
        ),
    ]
    lines += ["", "## Evaluation", ""]
    if metrics:
        protocol = metrics.get("protocol")
        if protocol:
            lines += [f"Protocol: {protocol}.", ""]
        rows = [
            (key, metrics[key])
            for key in ("test/acc", "test/uar", "test/f1")
            if isinstance(metrics.get(key), (int, float))
        ]
        names = {"test/acc": "WA (accuracy)", "test/uar": "UA (balanced accuracy)", "test/f1": "macro F1"}
        if rows:
            lines += ["| metric | value |", "| --- | --- |"] + [f"| {names[k]} | {v:.4f} |" for k, v in rows] + [""]
        recalls = [(label, metrics.get(f"test/recall/{label}")) for label in labels]
        if all(isinstance(v, (int, float)) for _, v in recalls):
            lines += ["| label | recall |", "| --- | --- |"] + [f"| {label} | {v:.4f} |" for label, v in recalls] + [""]
        measured = metrics.get("checkpoint")
        if measured and Path(measured).name != checkpoint.name:
            lines += [f"These test metrics were measured on `{Path(measured).name}`, not on `{checkpoint.name}`.", ""]
        lines.append(
            f"From `{metrics_path.name}` of the training run. Random splits share speakers between train and test; "
            "speaker-independent results are much lower."
        )
    else:
        lines.append("No metrics.json was found next to the checkpoint: evaluate before relying on this model.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classifier = pipeline("audio-classification", model="{out_name}")',
        f"# waveform: a 1-D float array at {sample_rate} Hz; given a file path, the pipeline decodes it with ffmpeg",
        f'classifier({{"raw": waveform, "sampling_rate": {sample_rate}}}, top_k=None)',
        "```",
        "",
        "With ser: `ser predict` accepts this directory as the model.",
        "",
        "RAVDESS, the usual training corpus, is licensed CC BY-NC-SA 4.0 by its authors.",
        "",
    ]
    return "\n".join(lines)


def _feature_extractor(module):
    from transformers import Wav2Vec2FeatureExtractor

    # Group-norm encoders must see each clip unpadded and unmasked (ser encodes them at their true
    # length); the others take the mask, as in training.
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=int(module.hparams.sample_rate),
        padding_value=0.0,
        do_normalize=bool(module.hparams.normalize),
        return_attention_mask=not uses_group_norm(module.model.encoder.config),
    )


def _check_hf_export(module, folder: Path) -> None:
    """Load `folder` as transformers would and compare its logits with the checkpoint's model."""
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(folder).eval()
    uses_mask = not uses_group_norm(module.model.encoder.config)
    worst = 0.0
    with torch.no_grad():
        # one clip at a time, unpadded: what the pipeline feeds the model
        for i, length in enumerate(_test_lengths(module.model, module.hparams.sample_rate)[:2]):
            waveform, mask = _padded_batch([length], seed=i)
            ours = module.model(waveform, mask)
            theirs = model(input_values=waveform, attention_mask=mask if uses_mask else None).logits
            worst = max(worst, float((ours - theirs).abs().max()))
    if not math.isfinite(worst) or worst > TOLERANCE:
        raise ExportError(
            f"the exported transformers model differs from the checkpoint (max |logit difference| {worst:.2e}): not written"
        )


def export_hf(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write `checkpoint` (a ser .ckpt) as a Hugging Face model directory `out`; returns `out`.

    `out` holds ``config.json`` (``<Model>ForSequenceClassification`` with ``id2label``/``label2id``),
    ``model.safetensors``, ``preprocessor_config.json`` (a ``Wav2Vec2FeatureExtractor`` with the
    checkpoint's sample rate and normalisation; it returns an attention mask unless the encoder uses
    group norm) and ``README.md`` (a model card; metrics from the run's ``metrics.json`` when it sits
    next to the checkpoint's ``checkpoints/`` folder). ``transformers.pipeline("audio-classification",
    model=out)`` then gives the probabilities of the checkpoint's model, to 1e-4.

    Only head ``hf`` with mean pooling can be exported (ExportError otherwise). A non-empty `out`
    is refused unless `overwrite`.
    """
    from transformers import AutoModelForAudioClassification

    checkpoint, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    _check_free(out, overwrite, directory=True)
    module = _load_module(checkpoint)
    _hf_exportable(module)
    labels = list(module.hparams.labels)
    config = hf_config(module.model, id2label=dict(enumerate(labels)))
    model = AutoModelForAudioClassification.from_config(config)
    model.load_state_dict(hf_state_dict(module.model), strict=True)
    model.eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _feature_extractor(module).save_pretrained(tmp)
        (tmp / "README.md").write_text(_model_card(module, checkpoint, out.name, config.architectures[0]))
        _check_hf_export(module, tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s as a transformers %s to %s", checkpoint, config.architectures[0], out)
    return out


# --- ONNX -----------------------------------------------------------------------------------------------


class _OnnxGraph(nn.Module):
    """What the ONNX graph computes: (waveforms (B, T) float32, attention_mask (B, T) int64) -> logits (B, C).

    Layer-norm encoders take the mask as in training. A group-norm encoder sees padding as signal
    and has no exportable way to split a batch by length, so its graph scores the whole (zeroed)
    padded batch and OnnxClassifier feeds it clips of one length at a time.
    """

    def __init__(self, classifier: SpeechClassifier):
        super().__init__()
        self.classifier = classifier
        self.uses_attention_mask = not classifier.encode_clips_alone

    def forward(self, waveforms: Tensor, attention_mask: Tensor) -> Tensor:
        # _pool and _classify, not forward: forward's length checks and per-length loop are Python
        # control flow that tracing would freeze at the example's values.
        if self.uses_attention_mask:
            pooled = self.classifier._pool(waveforms, attention_mask)
        else:
            # the product keeps attention_mask an input of the graph (padding is zero anyway)
            pooled = self.classifier._pool(waveforms * attention_mask.to(waveforms.dtype), None)
        return self.classifier._classify(pooled)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    # Tracing warns about every Python bool of a tensor (shape checks in transformers); the
    # export is verified numerically afterwards instead.
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            onnx_log.setLevel(level)


def _torch_onnx_export(graph: _OnnxGraph, example: tuple[Tensor, Tensor], path: Path, opset: int, dynamo: bool) -> None:
    names = dict(input_names=["waveforms", "attention_mask"], output_names=["logits"])
    if dynamo:
        batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
        program = torch.onnx.export(
            # the dynamo exporter implements opset 18 and up; converting down fails on wav2vec2's graph
            graph,
            example,
            None,
            opset_version=max(opset, 18),
            dynamo=True,
            verbose=False,
            dynamic_shapes={"waveforms": {0: batch, 1: time}, "attention_mask": {0: batch, 1: time}},
            **names,
        )
        program.save(str(path), external_data=False)  # one self-contained file, as the TorchScript exporter writes
    else:
        axes = {"waveforms": {0: "batch", 1: "time"}, "attention_mask": {0: "batch", 1: "time"}, "logits": {0: "batch"}}
        torch.onnx.export(graph, example, str(path), opset_version=opset, dynamo=False, dynamic_axes=axes, **names)


def _exporters() -> list[bool]:
    """Which exporters to try, in order: the dynamo one needs onnxscript; the TorchScript one is the fallback."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return [False]
    return [True, False]


def _write_metadata(path: Path, metadata: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))


def _onnx_difference(path: Path, classifier: SpeechClassifier, lengths_sets: list[list[int]]) -> float:
    session = OnnxClassifier(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for seed, lengths in enumerate(lengths_sets):
            waveforms, mask = _padded_batch(lengths, seed=100 + seed)
            ours = classifier(waveforms, mask)
            theirs = session(waveforms, mask)
            worst = max(worst, float((ours - theirs).abs().max()))
    return worst


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, overwrite: bool = False) -> Path:
    """Write `checkpoint` (a ser .ckpt) as one ONNX file `out`; returns `out`.

    Inputs ``waveforms`` (B, T) float32 (as :func:`ser.data.audio.to_model_input` gives them, zero
    padded) and ``attention_mask`` (B, T) int64 (1 on real samples); output ``logits`` (B, C). Batch
    and length are dynamic. ``metadata_props`` hold JSON values: ``labels``, ``sample_rate``,
    ``normalize``, ``uses_attention_mask`` (False for group-norm encoders: feed clips of equal
    length, as OnnxClassifier does), ``head``, ``pooling``, ``encoder``.

    Every head and pooling exports. The encoder's attention is switched to the eager implementation
    (plain matmuls) first. The dynamo exporter is tried when onnxscript is installed, then the
    TorchScript one; the file is written only if onnxruntime reproduces the checkpoint's logits to
    1e-4 on two padded batches of lengths other than the traced ones (ExportError otherwise).
    Models over 2 GB (beyond XLSR-large) do not fit one ONNX protobuf.
    """
    checkpoint, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    _check_free(out, overwrite, directory=False)
    module = _load_module(checkpoint)
    classifier: SpeechClassifier = module.model.eval()
    # SDPA's export path differs between torch versions; eager attention is plain matmul + softmax
    if hasattr(classifier.encoder, "set_attn_implementation"):
        classifier.encoder.set_attn_implementation("eager")
    else:  # pragma: no cover - transformers without the switch
        classifier.encoder.config._attn_implementation = "eager"
    graph = _OnnxGraph(classifier).eval()

    sample_rate = int(module.hparams.sample_rate)
    lengths = _test_lengths(classifier, sample_rate)
    # traced with padding in the batch, so the masking path is the one recorded
    example = _padded_batch([lengths[0], lengths[1]], seed=0)
    checks = [[lengths[2] + 7, lengths[0] - 3, lengths[2]], [lengths[1] - 1]]
    metadata = {
        "labels": [str(label) for label in module.hparams.labels],
        "sample_rate": sample_rate,
        "normalize": bool(module.hparams.normalize),
        "uses_attention_mask": graph.uses_attention_mask,
        "head": classifier.head,
        "pooling": classifier.pooling_name,
        "encoder": (module.hparams.encoder_config or {}).get("_name_or_path") or None,
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=".onnx", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    failures = []
    try:
        for dynamo in _exporters():
            kind = "dynamo" if dynamo else "TorchScript"
            try:
                with _quiet_export(), torch.no_grad():
                    _torch_onnx_export(graph, example, tmp, opset, dynamo)
                _write_metadata(tmp, metadata)
                worst = _onnx_difference(tmp, classifier, checks)
            except Exception as err:  # noqa: BLE001 - any exporter failure means: try the next one
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                failures.append(f"{kind} exporter failed ({type(err).__name__}: {first[:200]})")
                log.info("ONNX export with the %s exporter failed: %s", kind, first)
                continue
            if math.isfinite(worst) and worst <= TOLERANCE:
                _replace(tmp, out)
                log.info("exported %s to %s (%s exporter, max |logit difference| %.1e)", checkpoint, out, kind, worst)
                return out
            failures.append(f"{kind} export differs from PyTorch by {worst:.2e}")
        raise ExportError(f"ONNX export of '{checkpoint}' failed: {'; '.join(failures)}")
    finally:
        tmp.unlink(missing_ok=True)


class OnnxClassifier(nn.Module):
    """A ser ONNX export run with onnxruntime, with HFClassifier's interface.

    Attributes ``labels``, ``sample_rate``, ``normalize``, ``uses_attention_mask`` come from the
    file's metadata. ``forward(waveforms (B, T), attention_mask (B, T) bool/int | None) -> logits
    (B, C)`` float32 tensor on the waveforms' device; waveforms as :func:`ser.data.audio.to_model_input`
    gives them, zero padded. When the model takes no mask (group-norm encoders) clips are scored
    at their true lengths, clips of equal length together.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise EncoderError(f"ONNX file '{path}' does not exist: give a file written by export_onnx")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise EncoderError(f"'{path}' is not a readable ONNX model: {first[:200]}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            values = {key: json.loads(metadata[key]) for key in ("labels", "sample_rate", "normalize")}
        except (KeyError, ValueError):
            raise EncoderError(
                f"'{path}' has no ser metadata (labels, sample_rate, normalize): export it with export_onnx"
            ) from None
        self.labels = [str(label) for label in values["labels"]]
        self.sample_rate = int(values["sample_rate"])
        self.normalize = bool(values["normalize"])
        self.uses_attention_mask = bool(json.loads(metadata.get("uses_attention_mask", "true")))
        self.metadata = {key: json.loads(value) for key, value in metadata.items()}
        self._input_names = [i.name for i in self.session.get_inputs()]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def _run(self, waveforms: np.ndarray, mask: np.ndarray) -> Tensor:
        feeds = {"waveforms": waveforms, "attention_mask": mask}
        (logits,) = self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self._input_names})
        return torch.from_numpy(logits)

    def forward(self, waveforms: Tensor | np.ndarray, attention_mask: Tensor | np.ndarray | None = None) -> Tensor:
        """Logits (B, C) float32 for waveforms (B, T), attention_mask (B, T) or None (every sample real)."""
        waveforms = torch.as_tensor(waveforms)
        device = waveforms.device
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms have shape {tuple(waveforms.shape)}: give a batch of mono clips, (B, T)")
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask)
            if attention_mask.shape != waveforms.shape:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but waveforms have {tuple(waveforms.shape)}: "
                    "give one flag per sample"
                )
        x = waveforms.detach().to("cpu", torch.float32)
        mask = None if attention_mask is None else attention_mask.detach().to("cpu", torch.long)

        def run(clips: Tensor, clip_mask: Tensor | None = None) -> Tensor:
            if clip_mask is None:
                clip_mask = torch.ones(clips.shape, dtype=torch.long)
            return self._run(np.ascontiguousarray(clips.numpy()), np.ascontiguousarray(clip_mask.numpy()))

        if self.uses_attention_mask:
            logits = run(x, mask)
        else:
            logits = score_at_true_lengths(run, x, mask)
        return logits.to(device)

    def extra_repr(self) -> str:
        return f"path='{self.path}', labels={self.labels}, sample_rate={self.sample_rate}, normalize={self.normalize}"

"""Exporting a trained checkpoint: a Hugging Face model directory, or an ONNX file.

    export_hf(checkpoint, out)     config.json, model.safetensors, preprocessor_config.json, README.md:
                                   ``transformers.pipeline("audio-classification", model=out)`` loads
                                   it without ser and gives the same probabilities
    export_onnx(checkpoint, out)   one .onnx file (waveforms, attention_mask) -> logits, with the
                                   labels and preprocessing in its metadata: ``out`` itself when it
                                   ends in ``.onnx``, else ``out/model.onnx``;
                                   :class:`ser.onnx_runtime.OnnxClassifier` runs it

Only head ``hf`` with mean pooling is transformers' ``<Model>ForSequenceClassification``; every head
and pooling exports to ONNX. Both exports check their result against the checkpoint's PyTorch
model before writing `out`, and write it atomically (:mod:`ser.atomic`), so `out` is either
complete or untouched. Checkpoints are unpickled: export only checkpoints you trust.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .atomic import atomic_dir, atomic_file, current_umask
from .data.batching import pad_batch
from .errors import UserError, first_line
from .models.classifier import SpeechClassifier, hf_config, hf_state_dict
from .models.encoder import receptive_field, uses_group_norm
from .onnx_runtime import ONNX_FILE, OnnxClassifier, import_onnx

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max abs difference of logits between the export and the checkpoint's model


class ExportError(UserError):
    """A checkpoint that cannot be exported as asked; the message is one line saying why and what to do."""


# --- shared -------------------------------------------------------------------------------------------


def _load_module(checkpoint: str | Path):
    from .module import SERModule

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ExportError(
            f"checkpoint '{checkpoint}' does not exist: "
            "give a .ckpt file written by training (e.g. checkpoints/best.ckpt)"
        )
    try:
        # weights_only=False: a trainer's checkpoint holds more than tensors (callback and loop states)
        module = SERModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        raise ExportError(f"'{checkpoint}' is not a ser checkpoint ({type(err).__name__}: {first_line(err)})") from None
    return module.eval()


def _check_free(out: Path, overwrite: bool, directory: bool) -> None:
    if out.exists() and out.is_dir() != directory:
        what = "a file" if out.is_file() else "a directory"
        raise ExportError(f"'{out}' is {what}: give a path for the {'model directory' if directory else '.onnx file'}")
    if out.exists() and not overwrite:
        if out.is_dir() and not any(out.iterdir()):
            return  # an empty directory is replaced as if it were absent
        raise ExportError(f"'{out}' already exists: choose another output or pass overwrite=True")


def _test_lengths(classifier: SpeechClassifier, sample_rate: int) -> list[int]:
    """Clip lengths (samples) for checking an export: a few tenths of a second, all long enough for a frame."""
    need = receptive_field(classifier.encoder.config)
    return [max(need + extra, int(seconds * sample_rate)) for seconds, extra in ((0.6, 9), (0.45, 5), (0.3, 1))]


def _random_batch(lengths: list[int], seed: int) -> tuple[Tensor, Tensor]:
    """Random clips of ``lengths`` zero padded to the longest: waveforms (B, T) float32, mask (B, T) int64."""
    gen = torch.Generator().manual_seed(seed)
    waveforms, mask = pad_batch([torch.randn(n, generator=gen) for n in lengths])
    return waveforms, mask.long()


def _give_umask_mode(folder: Path) -> None:
    """Give the files in ``folder`` the mode the umask gives any new file.

    transformers writes ``model.safetensors`` to a ``mkstemp`` file (mode 0600) and renames it, so a
    colleague or a web server could not read the export.
    """
    mode = 0o666 & ~current_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


# --- Hugging Face ---------------------------------------------------------------------------------------


def _hf_exportable(module) -> None:
    model: SpeechClassifier = module.model
    if model.head != "hf" or model.pooling_name != "mean":
        raise ExportError(
            f"head {model.head!r} with {model.pooling_name!r} pooling cannot be exported to transformers "
            "(only head 'hf' with mean pooling is <Model>ForSequenceClassification); "
            "ONNX export (export_onnx) works for every head and pooling"
        )
    if model.utterance_norm:
        raise ExportError(
            "model.utterance_norm cannot be exported to transformers, whose <Model>ForSequenceClassification "
            "lacks it; ONNX export (export_onnx) works"
        )


def find_run_metrics(checkpoint: Path) -> tuple[dict | None, Path | None]:
    """The training run's ``metrics.json`` for a model file, and its path; ``(None, None)`` when there is none.

    A run directory keeps ``metrics.json`` beside ``checkpoints/`` (see :mod:`ser.train`), so it is looked
    for in the file's folder and that folder's parent. The model card of an export and ``ser demo`` read it.
    """
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
    metrics, metrics_path = find_run_metrics(checkpoint)

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
            waveform, mask = _random_batch([length], seed=i)
            ours = module.model(waveform, mask)
            theirs = model(input_values=waveform, attention_mask=mask if uses_mask else None).logits
            worst = max(worst, float((ours - theirs).abs().max()))
    if not math.isfinite(worst) or worst > TOLERANCE:
        raise ExportError(
            "the exported transformers model differs from the checkpoint "
            f"(max |logit difference| {worst:.2e}): not written"
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

    with atomic_dir(out, overwrite=True) as tmp:  # _check_free has refused what must not be replaced
        model.save_pretrained(tmp, safe_serialization=True)
        _feature_extractor(module).save_pretrained(tmp)
        (tmp / "README.md").write_text(_model_card(module, checkpoint, out.name, config.architectures[0]))
        _check_hf_export(module, tmp)
        _give_umask_mode(tmp)
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
        # pool and classify, not forward: forward's length checks and per-length loop are Python
        # control flow that tracing would freeze at the example's values.
        if self.uses_attention_mask:
            pooled = self.classifier.pool(waveforms, attention_mask)
        else:
            # the product keeps attention_mask an input of the graph (padding is zero anyway)
            pooled = self.classifier.pool(waveforms * attention_mask.to(waveforms.dtype), None)
        return self.classifier.classify(pooled)


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
    onnx = import_onnx("onnx", ExportError)

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
            waveforms, mask = _random_batch(lengths, seed=100 + seed)
            ours = classifier(waveforms, mask)
            theirs = session(waveforms, mask)
            worst = max(worst, float((ours - theirs).abs().max()))
    return worst


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, overwrite: bool = False) -> Path:
    """Write `checkpoint` (a ser .ckpt) as one ONNX file; returns the file's path.

    The file is `out` itself when `out` ends in ``.onnx``; otherwise `out` is a folder (as for
    :func:`export_hf`) holding ``model.onnx``, which ``ser predict out`` loads. An existing `out` is
    refused unless `overwrite` (an empty folder counts as absent).

    Inputs ``waveforms`` (B, T) float32 (as :func:`ser.data.audio.to_model_input` gives them, zero
    padded) and ``attention_mask`` (B, T) int64 (1 on real samples); output ``logits`` (B, C). Batch
    and length are dynamic. ``metadata_props`` hold JSON values: ``labels``, ``sample_rate``,
    ``normalize``, ``trim_db``, ``min_samples``, ``uses_attention_mask`` (False for group-norm
    encoders: feed clips of equal length, as OnnxClassifier does), ``head``, ``pooling``, ``encoder``.

    Every head and pooling exports. The encoder's attention is switched to the eager implementation
    (plain matmuls) first. The dynamo exporter is tried when onnxscript is installed, then the
    TorchScript one; the file is written only if onnxruntime reproduces the checkpoint's logits to
    1e-4 on two padded batches of lengths other than the traced ones (ExportError otherwise).
    Models over 2 GB (beyond XLSR-large) do not fit one ONNX protobuf. Needs the ``onnx`` extra.
    """
    # before any work: a missing package is a one-line error
    import_onnx("onnx", ExportError)
    import_onnx("onnxruntime", ExportError)
    checkpoint, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    in_folder = out.suffix.lower() != ".onnx"
    _check_free(out, overwrite, directory=in_folder)
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
    example = _random_batch([lengths[0], lengths[1]], seed=0)
    checks = [[lengths[2] + 7, lengths[0] - 3, lengths[2]], [lengths[1] - 1]]
    trim_db = module.hparams.get("trim_db")
    metadata = {
        "labels": [str(label) for label in module.hparams.labels],
        "sample_rate": sample_rate,
        "normalize": bool(module.hparams.normalize),
        "trim_db": None if trim_db is None else float(trim_db),
        "min_samples": receptive_field(classifier.encoder.config),
        "uses_attention_mask": graph.uses_attention_mask,
        "head": classifier.head,
        "pooling": classifier.pooling_name,
        "encoder": (module.hparams.encoder_config or {}).get("_name_or_path") or None,
    }

    def export_verified(path: Path) -> str:
        """Write the ONNX file at `path` with the first exporter whose result matches PyTorch; say which."""
        failures = []
        for dynamo in _exporters():
            kind = "dynamo" if dynamo else "TorchScript"
            try:
                with _quiet_export(), torch.no_grad():
                    _torch_onnx_export(graph, example, path, opset, dynamo)
                _write_metadata(path, metadata)
                worst = _onnx_difference(path, classifier, checks)
            except Exception as err:  # noqa: BLE001 - any exporter failure means: try the next one
                failures.append(f"{kind} exporter failed ({type(err).__name__}: {first_line(err)[:200]})")
                log.info("ONNX export with the %s exporter failed: %s", kind, first_line(err))
                continue
            if math.isfinite(worst) and worst <= TOLERANCE:
                return f"{kind} exporter, max |logit difference| {worst:.1e}"
            failures.append(f"{kind} export differs from PyTorch by {worst:.2e}")
        raise ExportError(f"ONNX export of '{checkpoint}' failed: {'; '.join(failures)}")

    if in_folder:
        with atomic_dir(out, overwrite=True) as tmp:  # _check_free has refused what must not be replaced
            how = export_verified(tmp / ONNX_FILE)
        target = out / ONNX_FILE
    else:
        with atomic_file(out) as tmp:
            how = export_verified(tmp)
        target = out
    log.info("exported %s to %s (%s)", checkpoint, target, how)
    return target

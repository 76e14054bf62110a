"""A frozen encoder's hidden states, computed once per encoder, corpus and preprocessing, and cached on disk.

When the encoder is frozen, running it again every epoch only repeats the same computation. This
module runs it once over a prepared corpus (:mod:`ser.data.prepare`) and stores what a head and a
layer probe need, memory-mapped, beside the audio cache; :mod:`ser.data.features` reads it::

    features = extract_features(encoder, corpus, cache_dir, frames="output")
    dataset = FrameDataset(features, indices, max_seconds=3.0)       # items: frames (T', D), label
    batch = collate_frames([dataset[(i, epoch)] for i in range(8)])  # frames (B, T', D), mask (B, T')
    logits = classifier.forward_frames(batch["frames"], batch["mask"])

The entry's name is a hash of the encoder (its config and every weight, so two random initialisations
are two encoders), of the prepared corpus's own cache key (which covers the source files and the
preprocessing), and of what is stored. It is built in a temporary folder (:func:`ser.atomic.atomic_dir`)
that is renamed into place only when complete, so an interrupted extraction leaves nothing that loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from .atomic import atomic_dir, write_json
from .data.batching import collate
from .data.features import META_FILE, OUTPUT, CachedFeatures, FeatureCacheError, format_bytes
from .data.prepare import PreparedCorpus
from .inference import plan_batches
from .models.encoder import uses_group_norm

log = logging.getLogger(__name__)

FEATURES_VERSION = 1
FRAME_CHOICES = ("output", "all", "none")
# Config fields that say where an encoder came from or how transformers runs it, not what it computes.
_CONFIG_FIELDS_NOT_IN_KEY = ("_name_or_path", "transformers_version", "_attn_implementation", "architectures")
# Samples of audio per extraction batch: clips of similar length share a forward pass up to this much.
_BATCH_SAMPLES = 16_000 * 32


def encoder_fingerprint(encoder: PreTrainedModel) -> str:
    """A hash of the encoder's config and of every weight: equal only for encoders that compute the same thing."""
    config = {k: v for k, v in encoder.config.to_dict().items() if k not in _CONFIG_FIELDS_NOT_IN_KEY}
    digest = hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=16)
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def frame_layers(frames: str | int, num_layers: int) -> list[int | str]:
    """What is stored as frames: ``"output"``, ``"all"``, ``"none"`` or one index of ``hidden_states``.

    ``"output"`` is the encoder's ``last_hidden_state``, which is not ``hidden_states[-1]`` in every
    encoder (transformers 5 leaves the final layer norm of stable-layer-norm models out of the latter).
    ``num_layers`` counts the embedding output (``config.num_hidden_layers + 1``); a negative index
    counts from the end, as in Python.
    """
    if frames == OUTPUT:
        return [OUTPUT]
    if frames == "all":
        return list(range(num_layers))
    if frames == "none":
        return []
    if isinstance(frames, int) and not isinstance(frames, bool) and -num_layers <= frames < num_layers:
        return [frames % num_layers]
    raise FeatureCacheError(
        f"frames={frames!r} names no layer of an encoder with {num_layers} hidden states: "
        f"give one of {', '.join(FRAME_CHOICES)} or a layer index from 0 to {num_layers - 1}"
    )


def feature_key(encoder: PreTrainedModel, corpus: PreparedCorpus, frames: str | int = OUTPUT) -> str:
    """The cache entry's name for this encoder, prepared corpus (its key covers the preprocessing) and frames."""
    layers = frame_layers(frames, encoder.config.num_hidden_layers + 1)
    blob = json.dumps(
        [FEATURES_VERSION, encoder_fingerprint(encoder), corpus.path.name, corpus.settings, layers],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def frame_counts(encoder: PreTrainedModel, lengths: np.ndarray) -> np.ndarray:
    """Frames the encoder gives for clips of ``lengths`` samples, ``(N,)`` int64."""
    counts = encoder._get_feat_extract_output_lengths(torch.as_tensor(lengths, dtype=torch.long))
    return counts.numpy().astype(np.int64)


def _autocast(device: torch.device, autocast: str | None):
    """Mixed precision for extraction: bf16 or fp16 on CUDA by default, on CPU only when asked."""
    if autocast == "none":
        return nullcontext()
    if autocast is None:
        if device.type != "cuda":
            return nullcontext()
        autocast = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if autocast not in dtypes:
        raise FeatureCacheError(f"autocast={autocast!r} is unknown: choose bf16, fp16 or none")
    return torch.autocast(device_type=device.type, dtype=dtypes[autocast])


@contextmanager
def _onednn_on():
    """oneDNN's convolutions for the extraction's forward passes, whatever training chose.

    Training on a CPU turns oneDNN off (``cpu_onednn``) because it prepares kernels anew for every
    input shape, which a backward pass pays twice; a forward pass alone gains more from its
    kernels than that preparation costs, and without it bf16 convolutions fall back to slow code.
    """
    before, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, True
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _check_space(cache_dir: Path, need: int) -> None:
    probe = cache_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise FeatureCacheError(
            f"the feature cache needs {format_bytes(need)} and {probe} has {format_bytes(free)} free: "
            "free some space, set data.cache_dir to a larger disk, or store fewer layers"
        )


def _encode(
    encoder: PreTrainedModel,
    waveforms: Tensor,
    attention_mask: Tensor | None,
    frame_counts_: Sequence[int],
    layers: Sequence[int | str],
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield each clip's ``(frames (T, L_f, D) of the stored layers, means (L, D) of every layer)``, float32."""
    outputs = encoder(waveforms, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
    hidden = torch.stack(outputs.hidden_states, dim=2).float()  # (B, T, L, D)
    stored = [outputs.last_hidden_state if layer == OUTPUT else outputs.hidden_states[layer] for layer in layers]
    stored = torch.stack(stored, dim=2).float() if stored else None  # (B, T, L_f, D)
    for row, count in enumerate(frame_counts_):
        frames = stored[row, :count] if stored is not None else None
        yield frames, hidden[row, :count].mean(dim=0)


def extract_features(
    encoder: PreTrainedModel,
    corpus: PreparedCorpus,
    cache_dir: str | Path,
    frames: str | int = OUTPUT,
    autocast: str | None = None,
    progress: bool = True,
) -> CachedFeatures:
    """The hidden states of ``encoder`` over every clip of ``corpus``, from the cache or extracted into it.

    ``frames``: what to store frame by frame (``"output"``, the encoder's output; ``"all"``, every layer;
    ``"none"``; or an index of ``hidden_states``); every layer's utterance mean is stored in any case.
    ``autocast``: ``bf16``, ``fp16`` or ``none`` (default: the device's half precision on CUDA, float32
    elsewhere). Clips are encoded as :class:`~ser.models.SpeechClassifier` encodes them: with an attention
    mask, or at their true length for a group-norm encoder, so a head gives the same logits on cached
    frames as on audio.
    Raises :class:`FeatureCacheError` before extracting when the disk lacks the space.
    """
    num_layers = encoder.config.num_hidden_layers + 1
    layers = frame_layers(frames, num_layers)
    cache_dir = Path(cache_dir).expanduser()
    entry = cache_dir / "features" / feature_key(encoder, corpus, frames)
    if (entry / META_FILE).is_file():
        log.info("reusing the feature cache %s", entry)
        return CachedFeatures.load(entry)

    lengths = corpus.lengths()
    counts = frame_counts(encoder, lengths)
    if (counts < 1).any():
        short = int(np.argmin(counts))
        raise FeatureCacheError(
            f"clip {corpus.clips[short]['key']} has {lengths[short]} samples, too few for one frame of the encoder: "
            "remove it from the corpus"
        )
    dim = encoder.config.hidden_size
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    frame_bytes = int(offsets[-1]) * len(layers) * dim * 2
    mean_bytes = len(lengths) * num_layers * dim * 4
    frames_text = (
        f"{len(lengths)} clips x {int(offsets[-1])} frames x {len(layers)} layer(s) x {dim} dims (float16) = "
        f"{format_bytes(frame_bytes)}, plus "
        if layers
        else ""
    )
    print(
        f"feature cache: {frames_text}utterance means {len(lengths)} clips x {num_layers} layers x {dim} dims "
        f"(float32) = {format_bytes(mean_bytes)}, in {entry}",
        flush=True,
    )
    _check_space(cache_dir, frame_bytes + mean_bytes + (1 << 20))

    device = next(encoder.parameters()).device  # extraction runs where the caller put the encoder
    was_training = encoder.training
    encoder.eval()
    alone = uses_group_norm(encoder.config)
    # clips of similar length share a pass; a group-norm encoder's clips only with clips of their own length
    batches = plan_batches(lengths, max(1, len(lengths)), equal_lengths=alone, max_samples=_BATCH_SAMPLES)
    try:
        with atomic_dir(entry, overwrite=True) as building:
            frame_file = None
            if layers:
                frame_file = np.lib.format.open_memmap(
                    building / "frames.npy", mode="w+", dtype=np.float16, shape=(int(offsets[-1]), len(layers), dim)
                )
            means = np.lib.format.open_memmap(
                building / "means.npy", mode="w+", dtype=np.float32, shape=(len(lengths), num_layers, dim)
            )
            _run_batches(
                encoder, corpus, batches, counts, offsets, layers, frame_file, means, device, alone, autocast, progress
            )
            if frame_file is not None:
                frame_file.flush()
            means.flush()
            del frame_file, means
            np.save(building / "offsets.npy", offsets)
            meta = {
                "version": FEATURES_VERSION,
                "encoder": encoder.config.to_dict().get("_name_or_path") or encoder.config.model_type,
                "corpus": str(corpus.path),
                "settings": corpus.settings,
                "layers": layers,
                "num_layers": num_layers,
                "hidden_size": dim,
                "sample_rate": corpus.sample_rate,
                "conv_kernel": list(encoder.config.conv_kernel),
                "conv_stride": list(encoder.config.conv_stride),
                "keys": [clip["key"] for clip in corpus.clips],
                "labels": [int(clip["label"]) for clip in corpus.clips],
            }
            write_json(building / META_FILE, meta)  # written last: a complete entry
    finally:
        encoder.train(was_training)
    log.info("feature cache written to %s", entry)
    return CachedFeatures.load(entry)


def _run_batches(
    encoder, corpus, batches, counts, offsets, layers, frame_file, means, device, alone, autocast, progress
):
    from rich.progress import track

    with torch.inference_mode(), _autocast(device, autocast), _onednn_on():
        for batch in track(
            batches,
            description=f"Extracting features of {len(counts)} clips",
            disable=not progress,
            transient=False,
        ):
            padded = collate(
                [
                    {"waveform": torch.from_numpy(np.array(corpus.waveform(int(i)))), "label": 0, "index": i}
                    for i in batch
                ]
            )
            attention_mask = None if alone else padded["attention_mask"].long().to(device)
            encoded = _encode(encoder, padded["waveforms"].to(device), attention_mask, counts[batch], layers)
            for index, (clip_frames, clip_means) in zip(batch, encoded):
                means[index] = clip_means.cpu().numpy()
                if frame_file is not None:
                    frame_file[offsets[index] : offsets[index + 1]] = clip_frames.half().cpu().numpy()

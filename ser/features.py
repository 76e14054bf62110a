"""A frozen encoder's hidden states, computed once per encoder, corpus and preprocessing, and cached on disk.

When the encoder is frozen, running it again every epoch only repeats the same computation. This
module runs it once over a prepared corpus (:mod:`ser.data.prepare`) and stores what a head and a
layer probe need, memory-mapped, beside the audio cache::

    features = extract_features(encoder, corpus, cache_dir, frames="last")
    dataset = FrameDataset(features, indices, max_seconds=3.0)       # items: frames (T', D), label
    batch = collate_frames([dataset[(i, epoch)] for i in range(8)])  # frames (B, T', D), mask (B, T')
    logits = classify_frames(classifier, batch["frames"], batch["mask"])

An entry holds:

- ``frames.npy``: float16 ``(F, L_f, D)``, every clip's frames back to back (``F`` frames in all), for
  the ``L_f`` stored layers (``frames="last"``: the last one; ``"all"``: every layer, embedding output
  included; ``"none"``: no frames, for a probe);
- ``offsets.npy``: int64 ``(N + 1,)``, clip ``i``'s frames are rows ``offsets[i]:offsets[i + 1]``;
- ``means.npy``: float32 ``(N, L, D)``, each layer's mean over the clip's frames (the layer probe's input);
- ``features.json``: what was stored and from what, written last.

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
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import PreTrainedModel

from .atomic import atomic_dir, write_json
from .data.batching import collate
from .data.prepare import PreparedCorpus
from .errors import UserError
from .models.classifier import SpeechClassifier
from .models.encoder import uses_group_norm

log = logging.getLogger(__name__)

FEATURES_VERSION = 1
FRAME_CHOICES = ("output", "all", "none")
OUTPUT = "output"  # the encoder's last_hidden_state, which a head without a weighted layer sum reads
_META_FILE = "features.json"
# Config fields that say where an encoder came from or how transformers runs it, not what it computes.
_CONFIG_FIELDS_NOT_IN_KEY = ("_name_or_path", "transformers_version", "_attn_implementation", "architectures")
# Samples of audio per extraction batch: clips of similar length share a forward pass up to this much.
_BATCH_SAMPLES = 16_000 * 32


class FeatureCacheError(UserError):
    """A feature cache that cannot be built or used; the message says what to do."""


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


def _format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return ""  # pragma: no cover


@dataclass
class CachedFeatures:
    """A complete feature cache entry, memory-mapped read-only.

    ``layers`` are what is stored as frames: indices of ``hidden_states`` (0 is the embedding output) or
    ``"output"``, the encoder's ``last_hidden_state``.
    """

    path: Path
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> CachedFeatures:
        path = Path(path)
        meta_file = path / _META_FILE
        if not meta_file.is_file():
            raise FeatureCacheError(f"{path} is not a complete feature cache (no {_META_FILE}): extract it again")
        return cls(path=path, meta=json.loads(meta_file.read_text()))

    @property
    def layers(self) -> list[int | str]:
        return list(self.meta["layers"])

    @property
    def num_layers(self) -> int:
        """Hidden states of the encoder, the embedding output included."""
        return int(self.meta["num_layers"])

    @property
    def keys(self) -> list[str]:
        return list(self.meta["keys"])

    @property
    def labels(self) -> np.ndarray:
        """Each clip's class index, ``(N,)``."""
        return np.asarray(self.meta["labels"], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.meta["keys"])

    @cached_property
    def offsets(self) -> np.ndarray:
        """``(N + 1,)`` int64: clip ``i``'s frames are rows ``offsets[i]:offsets[i + 1]``."""
        return np.load(self.path / "offsets.npy")

    @cached_property
    def all_frames(self) -> np.ndarray:
        """float16 ``(F, L_f, D)``, memory-mapped."""
        if not self.layers:
            raise FeatureCacheError(f"the feature cache {self.path} holds utterance means only, no frames")
        return np.load(self.path / "frames.npy", mmap_mode="r")

    @cached_property
    def means(self) -> np.ndarray:
        """float32 ``(N, L, D)``: each layer's mean over each clip's frames, memory-mapped."""
        return np.load(self.path / "means.npy", mmap_mode="r")

    def frames(self, index: int) -> np.ndarray:
        """Clip ``index``'s frames, float16 ``(T, L_f, D)``: a view into the memory map."""
        return self.all_frames[self.offsets[index] : self.offsets[index + 1]]

    def frame_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def frames_for_samples(self, samples: int) -> int:
        """Frames the encoder gives for ``samples`` samples of audio (its CNN's output length)."""
        # transformers' formula, repeated here so that reading a cache does not build the encoder
        for kernel, stride in zip(self.meta["conv_kernel"], self.meta["conv_stride"]):
            samples = (samples - kernel) // stride + 1
        return max(int(samples), 0)

    def __getstate__(self):
        # dataloader workers open the memory maps themselves
        return {"path": self.path, "meta": self.meta}


def _length_batches(lengths: np.ndarray, alone: bool) -> list[np.ndarray]:
    """Clip indices grouped by length: equal lengths only when clips must be encoded alone, else up to a budget."""
    order = np.argsort(lengths, kind="stable")
    batches, current = [], []
    for index in order:
        if current:
            longest = lengths[index]  # sorted, so the newest clip is the longest
            full = (longest * (len(current) + 1) > _BATCH_SAMPLES) or (alone and longest != lengths[current[0]])
            if full:
                batches.append(np.array(current))
                current = []
        current.append(int(index))
    if current:
        batches.append(np.array(current))
    return batches


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


def _check_space(cache_dir: Path, need: int) -> None:
    probe = cache_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise FeatureCacheError(
            f"the feature cache needs {_format_bytes(need)} and {probe} has {_format_bytes(free)} free: "
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
    if (entry / _META_FILE).is_file():
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
        f"{_format_bytes(frame_bytes)}, plus "
        if layers
        else ""
    )
    print(
        f"feature cache: {frames_text}utterance means {len(lengths)} clips x {num_layers} layers x {dim} dims "
        f"(float32) = {_format_bytes(mean_bytes)}, in {entry}",
        flush=True,
    )
    _check_space(cache_dir, frame_bytes + mean_bytes + (1 << 20))

    device = next(encoder.parameters()).device  # extraction runs where the caller put the encoder
    was_training = encoder.training
    encoder.eval()
    alone = uses_group_norm(encoder.config)
    batches = _length_batches(lengths, alone)
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
            write_json(building / _META_FILE, meta)  # written last: a complete entry
    finally:
        encoder.train(was_training)
    log.info("feature cache written to %s", entry)
    return CachedFeatures.load(entry)


def _run_batches(
    encoder, corpus, batches, counts, offsets, layers, frame_file, means, device, alone, autocast, progress
):
    from rich.progress import track

    with torch.inference_mode(), _autocast(device, autocast):
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


# --- reading: datasets of cached frames, and a head run on them ---------------------------------------------


class FrameDataset(Dataset):
    """Clips of a feature cache as frames, optionally cropped to a window of ``max_seconds``.

    Items (by position, or ``(position, epoch)`` from a training sampler, as :class:`ser.data.batching.ClipDataset`)
    are ``{"frames": (T', D) or (T', L_f, D) float32, "label": int, "index": int}``: ``layer`` picks one of the
    stored layers (``"output"`` or an index of ``hidden_states``), ``None`` keeps them all. A training item's
    window starts at a function of ``(seed, epoch, index)``; an evaluation item's is centred.
    """

    def __init__(
        self,
        features: CachedFeatures,
        indices: Sequence[int],
        max_seconds: float | None = None,
        layer: int | str | None = OUTPUT,
        seed: int = 0,
    ):
        self.features = features
        self.indices = np.asarray(indices, dtype=np.int64)
        self.seed = seed
        self.max_frames = None
        if max_seconds:
            self.max_frames = max(features.frames_for_samples(int(max_seconds * features.meta["sample_rate"])), 1)
        stored = features.layers
        if layer is None:
            self.column = None
        else:
            wanted = layer if layer == OUTPUT else layer % features.num_layers
            if wanted not in stored:
                raise FeatureCacheError(
                    f"layer {layer} is not in the feature cache (it stores {stored or 'no frames'}): "
                    "extract the features with that layer"
                )
            self.column = stored.index(wanted)

    def __len__(self) -> int:
        return len(self.indices)

    def lengths(self) -> np.ndarray:
        """Frames per item after cropping, ``(N,)``."""
        lengths = self.features.frame_lengths()[self.indices]
        return np.minimum(lengths, self.max_frames) if self.max_frames else lengths

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        position, epoch = item if isinstance(item, tuple) else (item, None)
        index = int(self.indices[position])
        frames = self.features.frames(index)
        if self.max_frames and len(frames) > self.max_frames:
            if epoch is None:
                start = (len(frames) - self.max_frames) // 2
            else:
                rng = np.random.default_rng((self.seed, epoch, index))
                start = int(rng.integers(len(frames) - self.max_frames + 1))
            frames = frames[start : start + self.max_frames]
        if self.column is not None:
            frames = frames[:, self.column]
        return {
            "frames": torch.from_numpy(np.asarray(frames, dtype=np.float32)),
            "label": int(self.features.meta["labels"][index]),
            "index": index,
        }


def collate_frames(items: list[dict]) -> dict[str, Tensor]:
    """Pad to the longest item: ``frames`` (B, T', ...) float32, ``mask`` (B, T') bool, ``labels``, ``index`` (B,)."""
    longest = max(len(item["frames"]) for item in items)
    shape = (len(items), longest, *items[0]["frames"].shape[1:])
    frames = torch.zeros(shape, dtype=torch.float32)
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for row, item in enumerate(items):
        frames[row, : len(item["frames"])] = item["frames"]
        mask[row, : len(item["frames"])] = True
    return {
        "frames": frames,
        "mask": mask,
        "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }


def classify_frames(classifier: SpeechClassifier, frames: Tensor, mask: Tensor | None = None) -> Tensor:
    """The classifier's head on cached frames: logits (B, C).

    ``frames``: (B, T, D) for a classifier that reads the last layer, or (B, T, L, D) with every layer
    for one with ``use_weighted_layer_sum``; ``mask`` (B, T) True on real frames. The encoder is not run.
    """
    if classifier.use_weighted_layer_sum:
        if frames.dim() != 4:
            raise ValueError(
                f"frames have shape {tuple(frames.shape)}: a weighted layer sum needs every layer, (B, T, L, D)"
            )
        weights = nn.functional.softmax(classifier.layer_weights, dim=-1)
        frames = (frames * weights.view(1, 1, -1, 1)).sum(dim=2)
    if classifier.projector is not None:
        frames = classifier.projector(frames)
    return classifier._classify(classifier.pooling(frames, mask))


def cache_size(features: CachedFeatures) -> int:
    """Bytes on disk of a feature cache entry."""
    return sum(f.stat().st_size for f in features.path.iterdir() if f.is_file())

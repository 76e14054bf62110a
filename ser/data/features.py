"""A frozen encoder's hidden states as cached on disk, and datasets that read them (the data side of the cache).

:mod:`ser.features` runs the encoder over a prepared corpus once and writes an entry; this module reads
entries and needs no model::

    features = CachedFeatures.load(entry)
    dataset = FrameDataset(features, indices, max_seconds=3.0)       # items: frames (T', D), label
    batch = collate_frames([dataset[(i, epoch)] for i in range(8)])  # frames (B, T', D), mask (B, T')

:class:`CachedFeatureDataModule` is the training data module on such an entry.

An entry holds:

- ``frames.npy``: float16 ``(F, L_f, D)``, every clip's frames back to back (``F`` frames in all), for
  the ``L_f`` stored layers (``"output"``: the encoder's output; ``"all"``: every layer, embedding output
  included; ``"none"``: no frames, for a probe);
- ``offsets.npy``: int64 ``(N + 1,)``, clip ``i``'s frames are rows ``offsets[i]:offsets[i + 1]``;
- ``means.npy``: float32 ``(N, L, D)``, each layer's mean over the clip's frames (the layer probe's input);
- ``features.json``: what was stored and from what, written last, so an entry without it never loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError
from .datamodule import RavdessDataModule

OUTPUT = "output"  # the encoder's last_hidden_state, which a head without a weighted layer sum reads
META_FILE = "features.json"


class FeatureCacheError(UserError):
    """A feature cache that cannot be built or used; the message says what to do."""


def format_bytes(size: float) -> str:
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
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise FeatureCacheError(f"{path} is not a complete feature cache (no {META_FILE}): extract it again")
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


def cache_size(features: CachedFeatures) -> int:
    """Bytes on disk of a feature cache entry."""
    return sum(f.stat().st_size for f in features.path.iterdir() if f.is_file())


class CachedFeatureDataModule(RavdessDataModule):
    """:class:`~ser.data.datamodule.RavdessDataModule` whose batches are cached frames instead of audio.

    The corpus, its split and its manifest are the audio data module's; :meth:`attach` then gives the
    feature cache extracted from that corpus (:func:`ser.features.extract_features`), and every loader
    yields ``frames`` (B, T', D) (or (B, T', L, D) with ``layer=None``), ``mask`` (B, T'), ``labels`` and
    ``index``. A training crop (``max_seconds``) is a window of frames.
    """

    collate_fn = staticmethod(collate_frames)

    def __init__(self, *args, layer: int | str | None = OUTPUT, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer = layer
        self.features: CachedFeatures | None = None

    def attach(self, features: CachedFeatures) -> None:
        """Read batches from ``features``, which must hold this corpus's clips in its order."""
        if self.corpus is None:
            self.setup()
        keys = [clip["key"] for clip in self.corpus.clips]
        if features.keys != keys:
            raise FeatureCacheError(
                f"the feature cache {features.path} holds other clips than the corpus {self.corpus.path}: "
                "extract the features of this corpus"
            )
        FrameDataset(features, [], layer=self.layer)  # refuses a cache without the layer now, not at the first batch
        self.features = features

    def dataset(self, stage: str) -> FrameDataset:
        if self.features is None:
            raise RuntimeError("CachedFeatureDataModule.attach(features) must come before its loaders")
        crop = self.max_samples / self.settings.sample_rate if stage == "train" and self.max_samples else None
        return FrameDataset(self.features, self.split[stage], max_seconds=crop, layer=self.layer, seed=self.seed)

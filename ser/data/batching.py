"""Batches of clips of similar length, padded with an attention mask.

RAVDESS clips run from about 3 to 5 seconds. Padding every batch to its longest clip wastes the
compute spent on padded frames; grouping clips of similar length keeps that waste small.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .prepare import PreparedCorpus


class ClipDataset(Dataset):
    """Clips of a prepared corpus, optionally randomly cropped to ``max_samples``.

    Items are requested by index, or by ``(index, epoch)`` from a training sampler: the crop offset
    is then a function of ``(seed, epoch, index)``, so it is the same in any worker process and
    after a resume.
    """

    def __init__(self, corpus: PreparedCorpus, indices: Sequence[int], max_samples: int | None = None, seed: int = 0):
        self.corpus = corpus
        self.indices = np.asarray(indices, dtype=np.int64)
        self.max_samples = max_samples
        self.seed = seed

    def __len__(self) -> int:
        return len(self._all_batches())  # exact under bucketing, drop_last and rank padding; cheap next to an epoch

    def lengths(self) -> np.ndarray:
        """Samples per item after cropping, ``(N,)``."""
        lengths = self.corpus.lengths()[self.indices]
        return np.minimum(lengths, self.max_samples) if self.max_samples else lengths

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        position, epoch = item if isinstance(item, tuple) else (item, None)
        index = int(self.indices[position])
        samples = self.corpus.waveform(index)
        if self.max_samples and len(samples) > self.max_samples:
            if epoch is None:  # evaluation: the centre, reproducibly
                start = (len(samples) - self.max_samples) // 2
            else:
                start = int(np.random.default_rng((self.seed, epoch, index)).integers(len(samples) - self.max_samples + 1))
            samples = samples[start : start + self.max_samples]
        return {"waveform": torch.from_numpy(np.array(samples)), "label": self.corpus.clips[index]["label"], "index": index}


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Pad to the longest clip of the batch.

    Returns:
        ``waveforms`` (B, T) float32 zero-padded, ``attention_mask`` (B, T) bool (True on real
        samples), ``labels`` (B,) int64 and ``index`` (B,) int64 (clip indices in the corpus).
    """
    longest = max(len(item["waveform"]) for item in items)
    waveforms = torch.zeros(len(items), longest)
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for row, item in enumerate(items):
        waveforms[row, : len(item["waveform"])] = item["waveform"]
        mask[row, : len(item["waveform"])] = True
    return {
        "waveforms": waveforms,
        "attention_mask": mask,
        "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }


class LengthBucketBatchSampler(Sampler[list]):
    """Batches of positions whose clips have similar lengths, split across ranks.

    Training (``shuffle=True``): each epoch the positions are shuffled, cut into buckets of
    ``batch_size * bucket_batches``, each bucket sorted by length and cut into batches, and the
    batches shuffled again; items are ``(position, epoch)`` so crops are reproducible. Evaluation:
    all positions sorted by length, then batched.

    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th batch. For training, the batch
    list is first padded by repetition to a multiple of ``num_replicas`` so that every rank runs the
    same number of steps; evaluation batches are not repeated, so no clip is counted twice.

    ``state_dict``/``load_state_dict`` record how many batches of the current epoch were consumed,
    so an interrupted epoch resumes where it stopped.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        bucket_batches: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.bucket_batches = bucket_batches
        self.epoch = 0
        self._skip = 0  # batches of the current epoch already consumed before a resume
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[np.ndarray]:
        if self.shuffle:
            rng = np.random.default_rng((self.seed, self.epoch))
            order = rng.permutation(len(self.lengths))
            bucket = self.batch_size * self.bucket_batches
            batches = []
            for start in range(0, len(order), bucket):
                chunk = order[start : start + bucket]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            if self.drop_last:
                batches = [b for b in batches if len(b) == self.batch_size]
            batches = [batches[i] for i in rng.permutation(len(batches))]
            if self.num_replicas > 1 and len(batches) % self.num_replicas:
                missing = self.num_replicas - len(batches) % self.num_replicas
                batches += batches[:missing]
        else:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list]:
        batches = self._all_batches()
        start, self._skip = self._skip, 0
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield [(int(i), self.epoch) for i in batch] if self.shuffle else [int(i) for i in batch]
        self._yielded = 0
        if self.shuffle:
            self.epoch += 1  # a plain DataLoader loop still gets a new order every epoch

    def __len__(self) -> int:
        return len(self._all_batches())  # exact under bucketing, drop_last and rank padding; cheap next to an epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self._skip = state["batches_done"]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of padded samples over all samples when ``batches`` (position lists) are padded to their longest."""
    lengths = np.asarray(lengths)
    real = padded = 0
    for batch in batches:
        batch_lengths = lengths[[b[0] if isinstance(b, tuple) else b for b in batch]]
        real += int(batch_lengths.sum())
        padded += int(batch_lengths.max()) * len(batch)
    return 1 - real / padded if padded else 0.0

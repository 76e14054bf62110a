"""Batches of clips of similar length, padded with an attention mask.

RAVDESS clips run from about 3 to 5 seconds. Padding every batch to its longest clip wastes the
compute spent on padded frames; grouping clips of similar length keeps that waste small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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
        return len(self.indices)

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
                start = int(
                    np.random.default_rng((self.seed, epoch, index)).integers(len(samples) - self.max_samples + 1)
                )
            samples = samples[start : start + self.max_samples]
        return {
            "waveform": torch.from_numpy(np.array(samples)),
            "label": self.corpus.clips[index]["label"],
            "index": index,
        }


def pad_batch(waveforms: Sequence[np.ndarray | torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips ``(T_i,)`` zero padded to the longest: waveforms (B, T) float32 and attention mask (B, T) bool.

    T is the longest clip's length rounded up to a multiple of ``multiple``. The mask is True on
    real samples. Clips are copied, so read-only memory maps are fine.
    """
    lengths = torch.tensor([len(w) for w in waveforms])
    longest = int(lengths.max()) if len(waveforms) else 0
    batch = np.zeros((len(waveforms), -(-longest // multiple) * multiple), dtype=np.float32)
    for row, waveform in enumerate(waveforms):
        batch[row, : len(waveform)] = np.asarray(waveform)
    return torch.from_numpy(batch), torch.arange(batch.shape[1]) < lengths[:, None]


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Pad to the longest clip of the batch.

    Returns:
        ``waveforms`` (B, T) float32 zero-padded, ``attention_mask`` (B, T) bool (True on real
        samples), ``labels`` (B,) int64 and ``index`` (B,) int64 (clip indices in the corpus).
    """
    waveforms, mask = pad_batch([item["waveform"] for item in items])
    return {
        "waveforms": waveforms,
        "attention_mask": mask,
        "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }


class LengthBucketBatchSampler(Sampler[list]):
    """Batches of positions whose clips have similar lengths, split across ranks.

    Training (``shuffle=True``): each epoch the positions are shuffled, cut into buckets of
    ``batch_size * num_replicas * bucket_batches``, each bucket sorted by length and cut into global
    batches of ``batch_size * num_replicas``, and the global batches shuffled again; each rank takes
    every ``num_replicas``-th clip of each global batch. A run on R ranks with ``batch_size`` B thus
    trains on exactly the batches of one process with ``batch_size`` R * B. Items are
    ``(position, epoch)`` so crops are reproducible. Evaluation: all positions sorted by length,
    batched, and each rank takes every ``num_replicas``-th batch, so no clip is counted twice.

    ``state_dict``/``load_state_dict`` record how many batches of which epoch were consumed, so an
    interrupted epoch resumes where it stopped.
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
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint
        self._iterating_epoch = 0
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> LengthBucketBatchSampler:
        """Itself: each epoch Lightning calls ``set_epoch`` on ``batch_sampler.sampler``, not on the batch sampler."""
        return self

    def _all_batches(self) -> list[np.ndarray]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            return batches[self.rank :: self.num_replicas]

        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        global_size = self.batch_size * self.num_replicas
        bucket = global_size * self.bucket_batches
        batches = []
        for start in range(0, len(order), bucket):
            chunk = order[start : start + bucket]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + global_size] for i in range(0, len(chunk), global_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == global_size]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        # a global batch smaller than the number of ranks would leave a rank without a clip
        batches = [np.resize(b, self.num_replicas) if len(b) < self.num_replicas else b for b in batches]
        return [b[self.rank :: self.num_replicas] for b in batches]

    def __iter__(self) -> Iterator[list]:
        batches = self._all_batches()
        start = 0
        if self._resume_at is not None:
            epoch, done = self._resume_at
            if epoch == self.epoch and done < len(batches):  # else that epoch was finished
                start = done
            self._resume_at = None
        self._iterating_epoch, self._yielded = self.epoch, start
        for batch in batches[start:]:
            self._yielded += 1
            yield [(int(i), self.epoch) for i in batch] if self.shuffle else [int(i) for i in batch]
        if self.shuffle:
            self.epoch += 1  # a plain DataLoader loop still gets a new order every epoch

    def __len__(self) -> int:
        return len(self._all_batches())  # exact under bucketing and drop_last; cheap next to an epoch

    def state_dict(self) -> dict:
        return {"epoch": self._iterating_epoch, "batches_done": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches_done"]))


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position inside an epoch goes into Lightning's checkpoints.

    Lightning saves ``state_dict()`` of a training loader that has one and hands it back through
    ``load_state_dict`` before iterating again. The sampler runs ahead of training (Lightning
    prefetches a batch to spot the last one, workers prefetch more), so the position saved is
    ``batches_processed()``, the trainer's own count, where one is given.
    """

    def __init__(self, *args, batches_processed: Callable[[], int | None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_processed = batches_processed

    def state_dict(self) -> dict:
        state = self.batch_sampler.state_dict()
        processed = self.batches_processed() if self.batches_processed else None
        if processed is not None:
            state["batches_done"] = processed
        return state

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of padded samples over all samples when ``batches`` (position lists) are padded to their longest."""
    lengths = np.asarray(lengths)
    real = padded = 0
    for batch in batches:
        batch_lengths = lengths[[b[0] if isinstance(b, tuple) else b for b in batch]]
        real += int(batch_lengths.sum())
        padded += int(batch_lengths.max()) * len(batch)
    return 1 - real / padded if padded else 0.0

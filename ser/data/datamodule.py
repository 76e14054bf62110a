"""The LightningDataModule: prepared corpus → split → length-bucketed, padded batches."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ..config import DataConfig
from .batching import ClipDataset, LengthBucketBatchSampler, ResumableDataLoader, collate
from .prepare import PreparedCorpus, PrepareSettings, prepare
from .splits import make_split, write_manifest

log = logging.getLogger(__name__)


class RavdessDataModule(pl.LightningDataModule):
    """RAVDESS (or any corpus in its format) for training, validation and test.

    ``prepare_data`` preprocesses the corpus into the cache once (rank 0 only); ``setup`` loads it
    from there without decoding, makes the split and writes its manifest to ``manifest_path``.
    Subclasses change what a batch holds through :meth:`dataset` and ``collate_fn``.
    """

    collate_fn = staticmethod(collate)

    def __init__(
        self,
        root: str,
        cache_dir: str = "~/.cache/ser",
        split: str = "random",
        fold: int | None = None,
        seed: int = 42,
        test_size: float = 0.2,
        val_actors: int = 2,
        test_actors: int = 4,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_seconds: float | None = None,
        sample_rate: int = 16_000,
        normalize: bool = True,
        trim_db: float | None = None,
        strict: bool = False,
        download: bool = True,
        synthesize_actors: int | None = None,
        bucket_batches: int = 32,
        manifest_path: str | None = None,
        progress: bool = True,
    ):
        super().__init__()
        self.root = root
        self.cache_dir = cache_dir
        self.split_name = split
        self.fold = fold
        self.seed = seed
        self.split_options = {"test_size": test_size, "val_actors": val_actors, "test_actors": test_actors}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_samples = int(max_seconds * sample_rate) if max_seconds else None
        self.settings = PrepareSettings(sample_rate=sample_rate, normalize=normalize, trim_db=trim_db)
        self.strict = strict
        self.download = download
        self.synthesize_actors = synthesize_actors
        self.bucket_batches = bucket_batches
        self.manifest_path = manifest_path
        self.progress = progress
        self.corpus: PreparedCorpus | None = None
        self._corpus_present = False
        self.split: dict | None = None

    @classmethod
    def from_config(
        cls,
        data: Any,
        *,
        seed: int,
        manifest_path: str | None = None,
        progress: bool = True,
        **replace: Any,
    ) -> RavdessDataModule:
        """The data module of a data config (:class:`ser.config.DataConfig`, or the composed ``cfg.data``).

        ``replace``: settings to use instead of the config's, e.g. ``sample_rate=`` for a model
        that was trained on another rate.
        """
        settings = {f.name: getattr(data, f.name) for f in dataclasses.fields(DataConfig)}
        return cls(**{**settings, **replace}, seed=seed, manifest_path=manifest_path, progress=progress)

    def prepare_data(self) -> None:
        corpus = self.load_corpus()
        summary = corpus.summary()
        log.info("corpus: %d clips, %.2f h, cache %s", summary["clips"], summary["hours"], summary["cache"])
        for skipped in corpus.skipped:
            log.warning("skipped %s: %s", skipped["location"], skipped["reason"])

    def load_corpus(self) -> PreparedCorpus:
        """The prepared corpus; with ``synthesize_actors``, a synthetic one is written at ``root`` first
        (once), unless ``root`` holds a corpus already."""
        if self.synthesize_actors and not self._corpus_present:
            from .synth import synthesize_unless_present

            synthesize_unless_present(self.root, actors=self.synthesize_actors, progress=self.progress)
            self._corpus_present = True  # fit and test each load the corpus: check (and say) once
        return prepare(
            self.root, self.cache_dir, self.settings, strict=self.strict, download=self.download, progress=self.progress
        )

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = self.load_corpus()  # warm cache: reads the index only
            self.split = make_split(self.corpus.clips, self.split_name, self.seed, self.fold, **self.split_options)
            if self.manifest_path and (self.trainer is None or self.trainer.is_global_zero):
                write_manifest(self.manifest_path, self.corpus.clips, self.split)

    def dataset(self, stage: str) -> ClipDataset:
        crop = self.max_samples if stage == "train" else None
        return ClipDataset(self.corpus, self.split[stage], max_samples=crop, seed=self.seed)

    def _loader(self, stage: str) -> DataLoader:
        dataset = self.dataset(stage)
        replicas, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = LengthBucketBatchSampler(
            dataset.lengths(),
            batch_size=self.batch_size if stage == "train" else self.eval_batch_size,
            shuffle=stage == "train",
            seed=self.seed,
            num_replicas=replicas,
            rank=rank,
            bucket_batches=self.bucket_batches,
        )
        options = dict(
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=False,
            # Each iter() of a DataLoader draws a seed from this generator; from the global one it
            # would shift the dropout masks of a resumed run against those of an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )
        if stage == "train":
            return ResumableDataLoader(dataset, batches_processed=self._train_batches_processed, **options)
        return DataLoader(dataset, **options)

    def _train_batches_processed(self) -> int | None:
        if self.trainer is None:
            return None
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

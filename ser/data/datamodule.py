"""The LightningDataModule: prepared corpus → split → length-bucketed, padded batches, for any corpus plug-in."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ..config import DataConfig
from .batching import ClipDataset, LengthBucketBatchSampler, ResumableDataLoader, collate
from .corpus import CorpusError
from .prepare import PreparedCorpus, PrepareSettings, prepare, prepare_corpus
from .ravdess import EMOTIONS
from .splits import make_split, write_manifest

log = logging.getLogger(__name__)


class RavdessDataModule(pl.LightningDataModule):
    """A corpus (RAVDESS by default, or any plug-in of :mod:`ser.data.corpora`) for training, validation and test.

    ``prepare_data`` preprocesses the corpus into the cache once (rank 0 only); ``setup`` loads it
    from there without decoding, makes the split and writes its manifest to ``manifest_path``.
    RAVDESS with its own labels and no options keeps :func:`ser.data.prepare.prepare`'s cache; every
    other corpus, label choice or option goes through its plug-in (:func:`ser.data.prepare.prepare_corpus`).
    Subclasses change what a batch holds through :meth:`dataset` and ``collate_fn``.
    """

    collate_fn = staticmethod(collate)

    def __init__(
        self,
        root: str,
        corpus: str = "ravdess",
        labels: list[str] | None = None,
        label_map: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
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
        self.corpus_name = corpus
        self.wanted_labels = list(labels) if labels else None
        self.label_map = dict(label_map) if label_map else None
        self.options = dict(options or {})
        self._plugin = None
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
        settings = {f.name: getattr(data, f.name) for f in dataclasses.fields(DataConfig) if hasattr(data, f.name)}
        for name in ("labels", "label_map", "options"):  # OmegaConf containers to plain ones
            if settings.get(name) is not None and not isinstance(settings[name], (list, dict)):
                from omegaconf import OmegaConf

                settings[name] = OmegaConf.to_container(settings[name], resolve=True)
        return cls(**{**settings, **replace}, seed=seed, manifest_path=manifest_path, progress=progress)

    @property
    def uses_plugin(self) -> bool:
        """Whether the corpus goes through its plug-in, rather than RAVDESS's own preparation."""
        return self.corpus_name != "ravdess" or bool(self.wanted_labels or self.label_map or self.options)

    @property
    def plugin(self):
        """The corpus plug-in (:class:`ser.data.corpora.Corpus`) for ``root``."""
        if self._plugin is None:
            from .corpora import get_corpus

            extra = {"download": self.download, "progress": self.progress} if self.corpus_name == "ravdess" else {}
            self._plugin = get_corpus(self.corpus_name, self.root, **{**extra, **self.options})
        return self._plugin

    @property
    def labels(self) -> list[str]:
        """The classes, in label-index order: known without preparing the corpus unless it is an open set."""
        if self.corpus is not None:
            return list(self.corpus.labels)
        if not self.uses_plugin:
            return list(EMOTIONS)
        if self.wanted_labels:
            return list(self.wanted_labels)
        if self.plugin.default_labels and not self.label_map:
            return list(self.plugin.default_labels)
        self._synthesize_if_asked()
        return list(self.plugin.listing(None, self.label_map).labels)  # names and side files only, no decoding

    @property
    def protocol(self):
        """The corpus's standard protocol (:class:`ser.data.corpora.Protocol`), None for RAVDESS's own."""
        if not self.uses_plugin or self.corpus_name == "ravdess" or self.corpus is None:
            return None
        from .prepare import speaker_of

        return self.plugin.protocol_for(speaker_of(clip) for clip in self.corpus.clips)

    def prepare_data(self) -> None:
        corpus = self.load_corpus()
        summary = corpus.summary()
        log.info("corpus: %d clips, %.2f h, cache %s", summary["clips"], summary["hours"], summary["cache"])
        for skipped in corpus.skipped:
            log.warning("skipped %s: %s", skipped["location"], skipped["reason"])

    def load_corpus(self) -> PreparedCorpus:
        """The prepared corpus; with ``synthesize_actors``, a synthetic one (RAVDESS) or a stand-in (another
        built-in corpus) is written at ``root`` first (once), unless ``root`` holds a corpus already."""
        self._synthesize_if_asked()
        if self.uses_plugin:
            return prepare_corpus(
                self.plugin,
                self.cache_dir,
                self.settings,
                labels=self.wanted_labels,
                label_map=self.label_map,
                strict=self.strict,
                progress=self.progress,
            )
        return prepare(
            self.root, self.cache_dir, self.settings, strict=self.strict, download=self.download, progress=self.progress
        )

    def _synthesize_if_asked(self) -> None:
        if not self.synthesize_actors or self._corpus_present:
            return
        if self.corpus_name == "ravdess":
            from .synth import synthesize_unless_present

            synthesize_unless_present(self.root, actors=self.synthesize_actors, progress=self.progress)
        else:
            from .corpora.stand_ins import DEFAULT_SPEAKERS, FORMATS, MAX_SPEAKERS, write_stand_in

            if self.corpus_name not in FORMATS:
                raise CorpusError(
                    f"data.synthesize_actors makes stand-ins of {', '.join(FORMATS)} only, "
                    f"not data={self.corpus_name}; unset it"
                )
            root = Path(self.root).expanduser()
            if root.exists() and (root.is_file() or any(root.iterdir())):
                log.info("%s already holds a corpus: using it as it is (data.synthesize_actors)", root)
            else:
                # never fewer than the default stand-in's: IEMOCAP's four make the two sessions that
                # leave-one-session-out needs
                wanted = max(int(self.synthesize_actors), DEFAULT_SPEAKERS[self.corpus_name])
                speakers = min(wanted, MAX_SPEAKERS[self.corpus_name])
                write_stand_in(root, self.corpus_name, speakers=speakers, progress=self.progress)
        self._corpus_present = True  # fit and test each load the corpus: check (and say) once

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = self.load_corpus()  # warm cache: reads the index only
            test_keys = None
            if self.uses_plugin and self.split_name == "fold":
                stages = self.plugin.fold_stages(self.fold)  # a corpus's own fold files (EmoBox's folders)
                if stages is not None:
                    test_keys = [key for key, stage in stages.items() if stage == "test"]
            self.split = make_split(
                self.corpus.clips,
                self.split_name,
                self.seed,
                self.fold,
                **self.split_options,
                protocol=self.protocol,
                test_keys=test_keys,
            )
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

"""``train(cfg)``: compose the pieces from a Hydra config, fit, test, and leave a readable run directory.

A run directory holds ``.hydra/`` (written by Hydra), ``split.csv``, ``checkpoints/best.ckpt`` and
``checkpoints/last.ckpt``, ``metrics.json``, ``confusion_matrix.png`` and ``curves.png``, so a run can
be read without W&B.

Lightning internals that training relies on, each because no public API does the job:

- ``strategies.launchers.*._MultiProcessingLauncher`` / ``_SubprocessScriptLauncher`` and the
  launcher's ``_start_method`` (here, :func:`refuse_unsupported_launchers`): the only way to tell,
  before training, how a DDP strategy will start its processes;
- ``trainer._signal_connector.received_sigterm`` and ``trainer.fit_loop._should_accumulate()``
  (:class:`ser.resume.CheckpointOnSigterm`): to defer a SIGTERM stop to the end of a gradient
  accumulation window;
- ``trainer.fit_loop.epoch_loop.batch_progress`` (:class:`ser.data.datamodule.RavdessDataModule`):
  the batches already processed in the epoch, for an exact mid-epoch resume.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities.exceptions import SIGTERMException

from . import atomic
from .callbacks import CompiledEncoder, CpuConvolutionKernels, History, build_callbacks
from .config import objective_metric, register_configs
from .data.datamodule import RavdessDataModule
from .data.features import OUTPUT, CachedFeatureDataModule, FeatureCacheError
from .data.splits import describe_protocol
from .errors import UserError
from .module import SERModule
from .plots import plot_confusion_matrix, plot_curves
from .pruning import pruning_callbacks
from .resume import (
    AtomicCheckpointIO,
    checkpoint_of_requeued_job,
    resolve_checkpoint,
)

log = logging.getLogger(__name__)
register_configs()  # train.py's @hydra.main composes against base_config


def resolve_precision(requested: str | None, accelerator: str) -> str:
    """``None`` picks 16-bit mixed precision on CUDA (as the recipe's native AMP) and 32-bit elsewhere."""
    if requested is not None:
        return str(requested)
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    chosen = "16-mixed" if on_cuda else "32-true"
    log.info("precision: %s (chosen automatically: %s)", chosen, "CUDA device found" if on_cuda else "no CUDA device")
    return chosen


def build_logger(cfg: DictConfig, run_dir: Path, resuming: bool = False):
    """W&B (offline unless an account is configured), CSV, or none.

    A W&B run's id is kept in ``run_dir/wandb_run_id``, so a run resumed in that directory
    (``resuming``) goes on logging into the same W&B run. Jobs of a Hydra multirun are grouped by
    their sweep directory.
    """
    name = cfg.logger.name
    if name == "none":
        return False
    if name == "csv":
        return pl.loggers.CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if name != "wandb":
        raise ValueError(f"logger={name} is unknown; choose wandb, csv or none")
    import wandb

    mode = os.environ.get("WANDB_MODE") or cfg.logger.mode or ("online" if wandb_key_configured() else "offline")
    if mode != "online":
        log.info("W&B logs offline into %s/wandb; upload later with `wandb sync`", run_dir)
    group, job_name = cfg.logger.group, None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        group = group or HydraConfig.get().sweep.dir
        job_name = HydraConfig.get().job.override_dirname or None
    # mode goes to wandb.init for this run only: WandbLogger(offline=True) would set WANDB_MODE for the
    # whole process and leak into later jobs of a multirun.
    return pl.loggers.WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=group,
        name=job_name,
        tags=list(cfg.logger.tags),
        save_dir=str(run_dir),
        mode=mode,
        id=wandb_run_id(run_dir, resuming),
        resume="allow",
        settings=wandb.Settings(init_timeout=60, silent=True),
    )


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of this run directory: read back on resume, made and written on a fresh start
    (a fresh run in a reused directory is a new W&B run)."""
    id_file = run_dir / "wandb_run_id"
    if resuming and id_file.is_file():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex[:12]  # W&B ids: lowercase letters and digits
    if pl.utilities.rank_zero_only.rank == 0:
        atomic.write_text(id_file, run_id + "\n")
    return run_id


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_module(cfg: DictConfig, labels: Sequence[str] | None = None) -> SERModule:
    """The Lightning module of ``cfg``; ``labels`` (its classes, in order) default to the data module's."""
    if labels is None:
        labels = RavdessDataModule.from_config(cfg.data, seed=cfg.seed, progress=False).labels
    model = OmegaConf.to_container(cfg.model, resolve=True)
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True)
    init_from = model.pop("init_from")
    model.pop("cache_features")  # a data setting: build_datamodule's
    if init_from:
        from .hub import architecture_of

        model.update(architecture_of(init_from, model))  # the published checkpoint decides the architecture
    module = SERModule(
        **model,
        labels=list(labels),
        optimizer=optimizer.pop("name"),
        **optimizer,
        scheduler=scheduler.pop("name"),
        **scheduler,
        sample_rate=cfg.data.sample_rate,
        normalize=cfg.data.normalize,
        trim_db=cfg.data.trim_db,
    )
    if init_from:
        from .hub import init_from_pretrained

        init_from_pretrained(module, init_from)
    return module


def uses_cached_features(cfg: DictConfig) -> bool:
    """``model.cache_features``, whose default (None) is ``model.freeze_encoder``; refused without a frozen encoder."""
    cache = cfg.model.get("cache_features")
    if cache and not cfg.model.freeze_encoder:
        raise FeatureCacheError(
            "model.cache_features=true needs model.freeze_encoder=true: an encoder that trains changes its features"
        )
    return bool(cfg.model.freeze_encoder if cache is None else cache)


def build_datamodule(cfg: DictConfig, run_dir: Path) -> RavdessDataModule:
    manifest = str(run_dir / "split.csv")
    if uses_cached_features(cfg):
        layer = None if cfg.model.use_weighted_layer_sum else OUTPUT
        return CachedFeatureDataModule.from_config(cfg.data, seed=cfg.seed, manifest_path=manifest, layer=layer)
    return RavdessDataModule.from_config(cfg.data, seed=cfg.seed, manifest_path=manifest)


def attach_cached_features(
    cfg: DictConfig, module: SERModule, datamodule: CachedFeatureDataModule, trainer: pl.Trainer
) -> None:
    """Extract the frozen encoder's hidden states over the corpus once (or find them in the cache) and
    hand them to the data module, so that every epoch runs the head alone."""
    if trainer.world_size > 1:
        raise FeatureCacheError(
            "model.cache_features runs on one device: set trainer.devices=1, or model.cache_features=false"
        )
    from .features import extract_features

    datamodule.prepare_data()
    datamodule.setup()
    encoder = module.model.encoder
    mask_prob = getattr(encoder.config, "mask_time_prob", 0.0)
    if mask_prob:
        log.info("the frozen encoder runs in eval mode: its SpecAugment (mask_time_prob=%s) is off", mask_prob)
    encoder.to(trainer.strategy.root_device)
    try:
        features = extract_features(
            encoder,
            datamodule.corpus,
            cfg.data.cache_dir,
            frames="all" if cfg.model.use_weighted_layer_sum else OUTPUT,
            progress=cfg.trainer.enable_progress_bar,
        )
    finally:
        encoder.to("cpu")
    datamodule.attach(features)


def build_trainer(cfg: DictConfig, run_dir: Path, logger, callbacks) -> pl.Trainer:
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in ("rich_progress", "model_summary_depth"):  # settings of callbacks, not of the Trainer
        options.pop(key)
    options["precision"] = resolve_precision(options["precision"], options["accelerator"])
    options = {k: v for k, v in options.items() if v is not None}
    return pl.Trainer(
        **options,
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=[*callbacks, CpuConvolutionKernels(cfg.cpu_onednn), *([CompiledEncoder()] if cfg.compile else [])],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the length-bucketed sampler shares batches out by rank itself
    )


def _scalar(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def train(cfg: DictConfig, callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Fit, test the best checkpoint, write the run directory; returns the metrics (``objective`` included).

    With ``cfg.ckpt_path`` the run resumes (see :func:`ser.resume.resolve_checkpoint`) and keeps
    writing into the run directory it came from. ``callbacks`` come before the config's own
    (:func:`ser.callbacks.build_callbacks`) in the Trainer's list.
    """
    checkpoint, run_dir = resolve_checkpoint(cfg.ckpt_path, Path(cfg.run_dir))
    checkpoint = checkpoint or checkpoint_of_requeued_job(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    if checkpoint is not None:
        log.info("resuming %s from %s", run_dir, checkpoint)
    log.info("run directory: %s", run_dir)

    datamodule = build_datamodule(cfg, run_dir)
    module = build_module(cfg, datamodule.labels)  # the corpus's classes: their number sizes the head
    history = History()
    logger = build_logger(cfg, run_dir, resuming=checkpoint is not None)
    trainer = build_trainer(
        cfg, run_dir, logger, [*callbacks, *build_callbacks(cfg, run_dir, history), *pruning_callbacks(cfg)]
    )
    refuse_unsupported_launchers(trainer)
    if isinstance(datamodule, CachedFeatureDataModule):
        attach_cached_features(cfg, module, datamodule, trainer)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        # weights_only=False: the checkpoint is this run's own, with loop and callback states
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=False)
        checkpoint_callback = trainer.checkpoint_callback
        metrics = {"protocol": describe_protocol(cfg.data, datamodule.protocol), "corpus": str(cfg.data.corpus)}
        best_score = checkpoint_callback.best_model_score
        if best_score is not None and math.isfinite(_scalar(best_score)):
            metrics[f"best/{cfg.checkpoint.monitor}"] = _scalar(best_score)
        metrics.update({k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        if cfg.test_after_fit and not cfg.trainer.fast_dev_run:
            best_path = checkpoint_callback.best_model_path or None
            trainer.test(module, datamodule=datamodule, ckpt_path=best_path, weights_only=False)
            metrics.update({k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
            metrics["checkpoint"] = best_path
        elif cfg.test_after_fit:
            trainer.test(module, datamodule=datamodule)
            metrics.update({k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        if cfg.eval_corpora and trainer.is_global_zero:
            from .evaluate import evaluate_corpora

            # the module holds the tested (best) weights: trainer.test loaded them
            metrics.update(evaluate_corpora(module, cfg, run_dir / "cross_corpus"))
        # the checkpointed (best) value when the objective is the monitored metric, else its last value
        objective = objective_metric(cfg)
        objective_key = f"best/{objective}" if f"best/{objective}" in metrics else objective
        metrics["objective"] = metrics.get(objective_key, float("nan"))

        if trainer.is_global_zero:
            write_run_artifacts(run_dir, metrics, module, history, logger)
            log.info("run directory: %s", run_dir.resolve())
        return metrics
    except SIGTERMException:
        log.warning("stopped by SIGTERM; resume with: python train.py <the same overrides> ckpt_path=%s", run_dir)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        if logger and isinstance(logger, pl.loggers.WandbLogger):
            import wandb

            # Lightning's WandbLogger never finishes its run: each multirun job must, or the next
            # job's metrics land in this job's run.
            wandb.finish()


class StrategyError(UserError, ValueError):
    """A distributed strategy this training loop cannot run under."""


def refuse_unsupported_launchers(trainer: pl.Trainer) -> None:
    """Refuse the ways Lightning starts DDP processes that break here, before any training.

    ``ddp`` starts the other processes by running the command line again, and inside a Hydra
    multirun that command is the whole sweep (Lightning PR 18175, Hydra issue 2070). The spawn and
    fork strategies train in child processes whose History and confusion matrix never return to
    this one, and spawn cannot pickle wav2vec 2.0's weight-normalised positional convolution.
    """
    launcher = trainer.strategy.launcher
    if isinstance(launcher, _MultiProcessingLauncher):
        raise StrategyError(
            f"DDP with the {launcher._start_method!r} start method (trainer.strategy=ddp_spawn, ddp_fork, "
            "ddp_notebook) trains in child processes whose results this run cannot collect: use trainer.strategy=ddp"
        )
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and isinstance(launcher, _SubprocessScriptLauncher):
        raise StrategyError(
            f"DDP over {trainer.num_devices} devices (trainer.strategy, trainer.devices) cannot run inside a "
            "Hydra multirun (-m): run each job on its own, or sweep with hydra/launcher=slurm, "
            "where SLURM starts the processes"
        )


def write_run_artifacts(run_dir: Path, metrics: dict, module: SERModule, history: History, logger) -> None:
    atomic.write_json(run_dir / "metrics.json", metrics)
    confusion = getattr(module, "test_confusion", None)
    if confusion is not None:
        figure = plot_confusion_matrix(confusion, module.hparams.labels, title=metrics["protocol"])
        atomic.save_figure(figure, run_dir / "confusion_matrix.png", dpi=120, bbox_inches="tight")
        if isinstance(logger, pl.loggers.WandbLogger):
            logger.log_image("test/confusion_matrix", [str(run_dir / "confusion_matrix.png")])
    figure = plot_curves(history.train, history.val)
    atomic.save_figure(figure, run_dir / "curves.png", dpi=120, bbox_inches="tight")
    if isinstance(logger, pl.loggers.WandbLogger):
        logger.experiment.summary.update({k: v for k, v in metrics.items() if isinstance(v, float)})
    log.info("metrics: %s", {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})

"""``train(cfg)``: compose the pieces from a Hydra config, fit, test, and leave a readable run directory.

A run directory holds ``.hydra/`` (written by Hydra), ``split.csv``, ``checkpoints/best.ckpt`` and
``checkpoints/last.ckpt``, ``metrics.json``, ``confusion_matrix.png`` and ``curves.png``, so a run can
be read without W&B.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import uuid
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
from .config import register_configs
from .data.datamodule import RavdessDataModule
from .data.ravdess import EMOTIONS
from .module import SERModule
from .plots import plot_confusion_matrix, plot_curves
from .pruning import pruning_callbacks
from .resume import (
    LAST_CHECKPOINT,
    AtomicCheckpointIO,
    CheckpointOnSigterm,
    RandomState,
    checkpoint_of_requeued_job,
    resolve_checkpoint,
)

log = logging.getLogger(__name__)
register_configs()  # train.py's @hydra.main composes against base_config


def describe_protocol(data: DictConfig) -> str:
    """Say which evaluation protocol a number comes from; it is stored next to every metric."""
    if data.split == "random":
        return f"random stratified {1 - data.test_size:.0%}/{data.test_size:.0%} split (speakers shared between train and test)"
    if data.split == "fold":
        return f"EmoBox speaker-independent fold {data.fold} of 6"
    return f"speaker-independent split ({data.test_actors} test actors, {data.val_actors} validation actors)"


def resolve_precision(requested: str | None, accelerator: str) -> str:
    """``None`` picks 16-bit mixed precision on CUDA (as the recipe's native AMP) and 32-bit elsewhere."""
    if requested is not None:
        return str(requested)
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    chosen = "16-mixed" if on_cuda else "32-true"
    log.info("precision: %s (chosen automatically: %s)", chosen, "CUDA device found" if on_cuda else "no CUDA device")
    return chosen


class History(pl.Callback):
    """Keeps the loss and accuracy curves in memory for ``curves.png``, whatever the logger.

    Lightning runs callback hooks before the module's own, and refreshes ``callback_metrics`` after
    both, so each epoch's values are read in the hook that follows: validation's in
    ``on_validation_end``, training accuracy at the start of the next epoch or the end of fitting.
    """

    def __init__(self):
        self.train: list[tuple[int, float]] = []
        self.val: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and trainer.is_global_zero:
            self.train.append((trainer.global_step, float(loss)))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.val.append({"step": trainer.global_step, **metrics})

    def _record_train_accuracy(self, trainer):
        accuracy = trainer.callback_metrics.get("train/acc")
        if accuracy is not None and trainer.is_global_zero:
            self.val.append({"step": trainer.global_step, "train/acc": float(accuracy)})

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self._record_train_accuracy(trainer)

    def on_train_end(self, trainer, pl_module):
        self._record_train_accuracy(trainer)

    # saved with each checkpoint, so the curves of a resumed run start at step 0
    def state_dict(self) -> dict:
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train, self.val = list(state_dict["train"]), list(state_dict["val"])


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


def build_callbacks(cfg: DictConfig, run_dir: Path, history: History) -> list[pl.Callback]:
    checkpoints = str(run_dir / "checkpoints")
    # last.ckpt has callbacks of its own: with save_last=True on the monitoring one, Lightning 2.6
    # rewrites last.ckpt only in epochs that improve the monitored metric, so resuming "last" would
    # go back to the best epoch.
    last = dict(dirpath=checkpoints, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    callbacks = [
        pl.callbacks.ModelCheckpoint(
            dirpath=checkpoints,
            filename="best",
            monitor=cfg.callbacks.monitor,
            mode=cfg.callbacks.mode,
            save_top_k=1,
            auto_insert_metric_name=False,
        ),
        pl.callbacks.ModelCheckpoint(**last),  # at the end of every epoch
        pl.callbacks.LearningRateMonitor(logging_interval="step"),
        pl.callbacks.ModelSummary(max_depth=cfg.callbacks.model_summary_depth),
        history,
        RandomState(),
        CheckpointOnSigterm(run_dir / LAST_CHECKPOINT),
    ]
    if cfg.callbacks.checkpoint_every_n_steps:
        # within the epoch too, so a SIGKILL loses at most this many optimizer steps
        callbacks.append(
            pl.callbacks.ModelCheckpoint(**last, every_n_train_steps=cfg.callbacks.checkpoint_every_n_steps)
        )
    if cfg.callbacks.rich_progress and cfg.trainer.enable_progress_bar:
        callbacks.append(pl.callbacks.RichProgressBar())
    if cfg.callbacks.early_stopping_patience is not None:
        callbacks.append(
            pl.callbacks.EarlyStopping(
                cfg.callbacks.monitor, mode=cfg.callbacks.mode, patience=cfg.callbacks.early_stopping_patience
            )
        )
    return callbacks


def build_module(cfg: DictConfig) -> SERModule:
    model = OmegaConf.to_container(cfg.model, resolve=True)
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True)
    init_from = model.pop("init_from")
    if init_from:
        from .hub import architecture_of

        model.update(architecture_of(init_from, model))  # the published checkpoint decides the architecture
    module = SERModule(
        **model,
        labels=list(EMOTIONS),
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


def build_datamodule(cfg: DictConfig, run_dir: Path) -> RavdessDataModule:
    data = cfg.data
    return RavdessDataModule(
        root=data.root,
        cache_dir=data.cache_dir,
        split=data.split,
        fold=data.fold,
        seed=cfg.seed,
        test_size=data.test_size,
        val_actors=data.val_actors,
        test_actors=data.test_actors,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        num_workers=data.num_workers,
        max_seconds=data.max_seconds,
        sample_rate=data.sample_rate,
        normalize=data.normalize,
        trim_db=data.trim_db,
        strict=data.strict,
        download=data.download,
        synthesize_actors=data.synthesize_actors,
        bucket_batches=data.bucket_batches,
        manifest_path=str(run_dir / "split.csv"),
    )


class CpuConvolutionKernels(pl.Callback):
    """Switches torch's oneDNN (mkldnn) convolutions on or off while fitting on a CPU, and back after."""

    def __init__(self, onednn: bool):
        self.onednn = onednn
        self._before: bool | None = None

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.strategy.root_device.type == "cpu":
            self._before, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, self.onednn

    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if self._before is not None:
            torch.backends.mkldnn.enabled, self._before = self._before, None


class CompiledEncoder(pl.Callback):
    """``torch.compile``s the encoder's forward while fitting, and gives the plain one back after.

    Shapes are dynamic (every batch has its own length), so a new batch length does not recompile.
    Only the forward is swapped, so parameter names, checkpoints and exports are those of the plain
    encoder. wav2vec 2.0's SpecAugment draws its masks in numpy, which splits the compiled graph in two.
    """

    def __init__(self):
        self._encoder = None

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._encoder = pl_module.model.encoder
            self._encoder.forward = torch.compile(self._encoder.forward, dynamic=True)

    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if self._encoder is not None:
            del self._encoder.forward  # the instance attribute; the class's forward shows again
            self._encoder = None


def build_trainer(cfg: DictConfig, run_dir: Path, logger, callbacks) -> pl.Trainer:
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
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


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, write the run directory; returns the metrics (``objective`` included).

    With ``cfg.ckpt_path`` the run resumes (see :func:`ser.resume.resolve_checkpoint`) and keeps
    writing into the run directory it came from.
    """
    checkpoint, run_dir = resolve_checkpoint(cfg.ckpt_path, Path(cfg.run_dir))
    checkpoint = checkpoint or checkpoint_of_requeued_job(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    if checkpoint is not None:
        log.info("resuming %s from %s", run_dir, checkpoint)
    log.info("run directory: %s", run_dir)

    module = build_module(cfg)
    datamodule = build_datamodule(cfg, run_dir)
    history = History()
    logger = build_logger(cfg, run_dir, resuming=checkpoint is not None)
    trainer = build_trainer(cfg, run_dir, logger, build_callbacks(cfg, run_dir, history) + pruning_callbacks(cfg))
    refuse_unsupported_launchers(trainer)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        # weights_only=False: the checkpoint is this run's own, with loop and callback states
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=False)
        checkpoint_callback = trainer.checkpoint_callback
        metrics = {"protocol": describe_protocol(cfg.data)}
        best_score = checkpoint_callback.best_model_score
        if best_score is not None and math.isfinite(_scalar(best_score)):
            metrics[f"best/{cfg.callbacks.monitor}"] = _scalar(best_score)
        metrics.update({k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        if cfg.test_after_fit and not cfg.trainer.fast_dev_run:
            best_path = checkpoint_callback.best_model_path or None
            trainer.test(module, datamodule=datamodule, ckpt_path=best_path, weights_only=False)
            metrics.update({k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
            metrics["checkpoint"] = best_path
        elif cfg.test_after_fit:
            trainer.test(module, datamodule=datamodule)
            metrics.update({k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        # the checkpointed (best) value when the objective is the monitored metric, else its last value
        objective_key = f"best/{cfg.objective}" if f"best/{cfg.objective}" in metrics else cfg.objective
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


class StrategyError(ValueError):
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
            f"DDP with the {launcher._start_method!r} start method (trainer.strategy=ddp_spawn, ddp_fork, ddp_notebook) trains in "
            "child processes whose results this run cannot collect: use trainer.strategy=ddp"
        )
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and isinstance(launcher, _SubprocessScriptLauncher):
        raise StrategyError(
            f"DDP over {trainer.num_devices} devices (trainer.strategy, trainer.devices) cannot run inside a Hydra multirun (-m): "
            "run each job on its own, or sweep with hydra/launcher=slurm, where SLURM starts the processes"
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

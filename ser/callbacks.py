"""The Lightning callbacks of a training run, and :func:`build_callbacks`, which picks them from the config.

Resuming's own callbacks (:class:`~ser.resume.RandomState`, :class:`~ser.resume.CheckpointOnSigterm`)
live with the rest of resuming in :mod:`ser.resume`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from .resume import LAST_CHECKPOINT, CheckpointOnSigterm, RandomState


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


def build_callbacks(cfg: DictConfig, run_dir: Path, history: History) -> list[pl.Callback]:
    """The callbacks of a training run: checkpoints (``cfg.checkpoint``), learning-rate log, model summary,
    ``history``, random state and SIGTERM checkpoint for resuming, progress bar, early stopping."""
    checkpoint = cfg.checkpoint
    checkpoints = str(run_dir / "checkpoints")
    # last.ckpt has callbacks of its own: with save_last=True on the monitoring one, Lightning 2.6
    # rewrites last.ckpt only in epochs that improve the monitored metric, so resuming "last" would
    # go back to the best epoch.
    last = dict(dirpath=checkpoints, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    callbacks = [
        pl.callbacks.ModelCheckpoint(
            dirpath=checkpoints,
            filename="best",
            monitor=checkpoint.monitor,
            mode=checkpoint.mode,
            save_top_k=1,
            auto_insert_metric_name=False,
        ),
        pl.callbacks.ModelCheckpoint(**last),  # at the end of every epoch
        pl.callbacks.LearningRateMonitor(logging_interval="step"),
        pl.callbacks.ModelSummary(max_depth=cfg.trainer.model_summary_depth),
        history,
        RandomState(),
        CheckpointOnSigterm(run_dir / LAST_CHECKPOINT),
    ]
    if checkpoint.every_n_steps:
        # within the epoch too, so a SIGKILL loses at most this many optimizer steps
        callbacks.append(pl.callbacks.ModelCheckpoint(**last, every_n_train_steps=checkpoint.every_n_steps))
    if cfg.trainer.enable_progress_bar:
        if not sys.stdout.isatty():
            callbacks.append(EpochLines())
        elif cfg.trainer.rich_progress:
            callbacks.append(pl.callbacks.RichProgressBar())
    if checkpoint.early_stopping_patience is not None:
        callbacks.append(
            pl.callbacks.EarlyStopping(
                checkpoint.monitor, mode=checkpoint.mode, patience=checkpoint.early_stopping_patience
            )
        )
    return callbacks


class EpochLines(pl.callbacks.ProgressBar):
    """The progress of a run whose output is a file or a pipe (a SLURM log, ``| tee``): one plain line per
    epoch, which ``grep`` and ``tail -f`` can read. Lightning's bars redraw in place, which a file
    records as a stream of carriage returns (tqdm) or not at all (rich)."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Validation has run by now; the module's epoch-level training metrics are logged after this hook,
        so the line shows the last step's loss and this epoch's validation."""
        if not self._enabled or not trainer.is_global_zero:
            return
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if (name == "train/loss" or name.startswith("val/")) and value.numel() == 1
        }
        shown = " ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items()))
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        seconds = time.monotonic() - self._started
        print(
            f"epoch {trainer.current_epoch + 1}{epochs} step {trainer.global_step} {shown} ({seconds:.0f} s)",
            flush=True,
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

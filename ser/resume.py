"""Surviving interruption: atomic checkpoints, a checkpoint on SIGTERM, exact mid-epoch resume.

A run can be stopped at any point and resumed with ``python train.py ... ckpt_path=RUN_DIR`` (or
``hydra.run.dir=RUN_DIR ckpt_path=last``). What makes the resumed run end as the uninterrupted one:

- Lightning's checkpoint holds the weights, the optimizer, the schedule, the AMP scaler and the loop
  counters; :class:`~ser.data.batching.ResumableDataLoader` adds the position inside the epoch;
  :class:`RandomState` adds the random generators (dropout, SpecAugment);
- :class:`CheckpointOnSigterm` saves ``last.ckpt`` when SIGTERM arrives, at the end of the current
  accumulation window, so no accumulated gradient is dropped;
- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file beside it and renames it
  into place, so a kill during a save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .atomic import atomic_file
from .errors import UserError

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class ResumeError(UserError, ValueError):
    """``ckpt_path`` names nothing that can be resumed."""


def resolve_checkpoint(ckpt_path: str | None, run_dir: Path) -> tuple[Path | None, Path]:
    """The checkpoint to resume from and the run directory to keep writing into.

    ``ckpt_path``: ``None`` (a fresh run), ``"last"`` (``run_dir``'s own ``checkpoints/last.ckpt``),
    a run directory (its ``checkpoints/last.ckpt``; the resumed run writes into that directory), or a
    ``.ckpt`` file (inside a run's ``checkpoints/``, that run continues; elsewhere, ``run_dir`` does).
    """
    if ckpt_path is None:
        return None, run_dir
    if ckpt_path == "last":
        # Lightning's own "last" only warns when there is none and trains from scratch
        checkpoint = run_dir / LAST_CHECKPOINT
        if not checkpoint.is_file():
            raise ResumeError(
                f"ckpt_path=last, but {run_dir} has no {LAST_CHECKPOINT}: set hydra.run.dir to the run to resume, "
                "or ckpt_path to its directory"
            )
        return checkpoint, run_dir
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        checkpoint = path / LAST_CHECKPOINT
        if not checkpoint.is_file():
            raise ResumeError(
                f"ckpt_path={ckpt_path} is a directory without {LAST_CHECKPOINT}: "
                "point it at a run directory or a .ckpt file"
            )
        return checkpoint, path
    if not path.is_file():
        raise ResumeError(
            f"ckpt_path={ckpt_path} does not exist: point it at a run directory, a .ckpt file, or use ckpt_path=last"
        )
    owner = path.parent.parent if path.parent.name == "checkpoints" else run_dir
    return path, owner


def checkpoint_of_requeued_job(run_dir: Path) -> Path | None:
    """In a SLURM job that was requeued (preempted, or stopped at its time limit), the newest checkpoint
    its earlier run left: ``last.ckpt`` (written on SIGTERM) or Lightning's ``hpc_ckpt_<n>.ckpt``
    (written on the USR1 warning). Lightning itself looks for the latter only."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
        return None
    candidates = [p for p in (run_dir / LAST_CHECKPOINT, *run_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the checkpoint's own directory, fsync, then rename
    (:func:`ser.atomic.atomic_file`), with the mode the umask gives any new file.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system
    temp directory; when that is another filesystem the final move is a copy into the destination,
    and a kill during it leaves a truncated checkpoint where the previous good one was.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_file(path, fsync=True) as tmp:
            torch.save(checkpoint, tmp)


class RandomState(pl.Callback):
    """Saves the random generators with each checkpoint and restores them when training resumes.

    Restored in ``on_train_start``, after everything that runs between loading a checkpoint and the
    first training batch (the sanity check, building dataloaders), so the next dropout and SpecAugment
    masks are the ones the uninterrupted run drew. Lightning's own helper stores numpy's state as an
    ndarray, which ``torch.load(weights_only=True)`` refuses; this keeps to tensors and numbers.
    """

    def __init__(self):
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        version, mt_state, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = np.random.get_state()
        state = {
            "python": [version, list(mt_state), gauss],
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "position": int(position),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        version, mt_state, gauss = state["python"]
        random.setstate((version, tuple(mt_state), gauss))
        n = state["numpy"]
        np.random.set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"])
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointOnSigterm(pl.Callback):
    """On SIGTERM (a scheduler's preemption, ``kill``), save ``checkpoints/last.ckpt`` and stop.

    Lightning stops after the batch in which the signal arrived. In the middle of an accumulation
    window that would throw away the gradients accumulated so far, and the resumed run would take
    one optimizer step on part of a window; so the stop waits for the window's last batch. The
    signal flag lives on Lightning's private signal connector: there is no public way to defer it.
    """

    def __init__(self, checkpoint: Path):
        self.checkpoint = Path(checkpoint)
        self._deferred = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        connector = trainer._signal_connector
        mid_window = trainer.fit_loop._should_accumulate()
        if connector.received_sigterm and mid_window:
            connector.received_sigterm, self._deferred = False, True
            log.info("SIGTERM: stopping at the end of this accumulation window")
        elif self._deferred and not mid_window:
            connector.received_sigterm, self._deferred = True, False

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.checkpoint)  # every rank takes part; rank 0 writes
            log.info("SIGTERM: saved %s", self.checkpoint)

"""Pruning Optuna trials from inside training: how the sweeper's trial reaches ``train()``, and the
Lightning callback that reports each validation to it and stops a trial that falls behind.

The Optuna sweeper (``hydra_plugins/ser_optuna_sweeper``) asks the study for a batch of trials and, when
Hydra's basic launcher runs the jobs in its own process, offers each trial under its job's number
(``hydra.job.num``) for as long as the batch runs. ``train()`` asks :func:`pruning_callbacks` for the
callback of the trial offered to its job, if any. A pruned trial stops training as early stopping
does, so that ``train()`` ends normally; the callback writes ``pruned.json`` into the run directory,
which the sweep summary reads, and the sweeper tells the study the trial was pruned.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
from omegaconf import DictConfig

from . import atomic
from .config import objective_metric
from .errors import UserError
from .summarize import PRUNED_FILE

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


@dataclass
class OfferedTrial:
    """A trial of the running batch; ``pruned`` is set by the callback that stopped it."""

    trial: optuna.Trial
    pruned: bool = False


_offered: dict[int, OfferedTrial] = {}


class PruningMetricError(UserError):
    """The objective that trials report is not a metric the validation logs."""


@contextlib.contextmanager
def offer_trials(trials_by_job: Mapping[int, optuna.Trial]) -> Iterator[dict[int, OfferedTrial]]:
    """Makes each trial reachable by the job numbered with its key while the launcher runs the batch."""
    offered = {job_num: OfferedTrial(trial) for job_num, trial in trials_by_job.items()}
    _offered.update(offered)
    try:
        yield offered
    finally:
        for job_num in offered:
            _offered.pop(job_num, None)


def offered_trial(job_num: int) -> OfferedTrial | None:
    return _offered.get(job_num)


class OptunaPruning(pl.Callback):
    """Reports ``monitor`` to the trial after each validation (step = the validation's number, 0, 1, ...)
    and stops training when the study's pruner says the trial falls behind.

    Optuna's own Lightning callback (optuna-integration) raises ``TrialPruned`` from inside ``fit``, which
    Lightning turns into a crashed run; here the trainer stops cleanly and the test and the run's files
    still follow, so a pruned job looks finished to Hydra.
    """

    def __init__(self, offered: OfferedTrial, monitor: str, run_dir: str | Path):
        self.offered = offered
        self.monitor = monitor
        self.run_dir = Path(run_dir)
        self.validations = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.offered.pruned:
            return
        if self.monitor not in trainer.callback_metrics:
            logged = ", ".join(sorted(trainer.callback_metrics))
            raise PruningMetricError(
                f"cannot prune on objective={self.monitor}: validation logs {logged}; set objective to one of them"
            )
        value = float(trainer.callback_metrics[self.monitor])
        step = self.validations
        self.validations += 1
        trial = self.offered.trial
        trial.report(value, step)
        if not trial.should_prune():
            return
        self.offered.pruned = True
        trainer.should_stop = True
        pruned = {"trial": trial.number, "validation": step, "epoch": trainer.current_epoch, self.monitor: value}
        atomic.write_json(self.run_dir / PRUNED_FILE, pruned)
        log.info(
            "trial %d pruned after validation %d (epoch %d): %s %.4f, by the study's %s",
            trial.number,
            step,
            trainer.current_epoch,
            self.monitor,
            value,
            type(trial.study.pruner).__name__,
        )


def pruning_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The pruning callback of the trial the sweeper offered to this Hydra job, or none (a plain run, a
    grid sweep, a trial run in another process)."""
    from hydra.core.hydra_config import HydraConfig

    if not _offered or not HydraConfig.initialized():
        return []
    offered = offered_trial(HydraConfig.get().job.num)
    return [] if offered is None else [OptunaPruning(offered, objective_metric(cfg), cfg.run_dir)]

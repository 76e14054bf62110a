"""Hydra callbacks for sweeps: a summary that outlives failed jobs, and Optuna searches that resume.

``conf/hydra/default.yaml`` registers :class:`SweepSummary` for every run (it acts in multiruns only);
``conf/hparams_search/optuna.yaml`` adds :class:`ResumeOptunaStudy`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from .summarize import DEFAULT_METRICS, summarize

log = logging.getLogger(__name__)

JOB_NUMBER = "${hydra.job.num}"

# Registered on import: a SLURM job unpickles these callbacks, and with them this resolver, before it
# resolves its own directory.
if not OmegaConf.has_resolver("ser.add"):
    OmegaConf.register_new_resolver("ser.add", lambda *numbers: sum(int(number) for number in numbers))


class SweepSummary(Callback):
    """Rewrites ``summary.md``, ``summary.csv`` and ``summary.png`` in the sweep directory after each job,
    and prints the table once, when the sweep ends.

    Hydra's basic sweeper raises the first failed job's exception once its batch is done and then
    skips ``on_multirun_end``, but ``on_job_end`` runs after every job: the summary written there
    lists the failed jobs too.
    """

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS):
        self.metrics = tuple(metrics)

    @rank_zero_only  # under SLURM every task of a multi-GPU job ends the job; one of them writes
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            summarize(config.hydra.sweep.dir, metrics=self.metrics, quiet=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(config.hydra.sweep.dir, metrics=self.metrics)


class ResumeOptunaStudy(Callback):
    """Makes a second ``python train.py -m hparams_search=optuna ...`` finish the study the first one began.

    The Optuna sweeper (``hydra_plugins/ser_optuna_sweeper``) reopens its study (``load_if_exists``) but
    otherwise starts over: it numbers jobs from 0 again, so new trials would overwrite the first trials'
    directories; it runs ``n_trials`` more trials, not the rest; and trials that were running when the
    search was killed stay RUNNING. Hydra calls ``on_multirun_start`` with the very config it then builds the sweeper
    and the jobs from, so this callback adjusts that config before any of them exists:

    - creates the SQLite file's directory (the sweep directory does not exist yet);
    - marks RUNNING trials as failed: they were interrupted;
    - lowers ``hydra.sweeper.n_trials`` to the trials still missing, so that ``n_trials`` is the
      number of complete or pruned trials the study ends with (failed ones are run again);
    - numbers new jobs after the trials already in the study, so job directory N holds trial N;
    - moves the sampler's seed on by the same count, so it does not draw the first trials again.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if not sweeper.get("storage"):
            return  # an in-memory study: nothing to resume
        try:
            self._resume(config)
        except Exception as error:
            # Hydra would turn an exception into a warning and run the search anyway, numbering its
            # jobs from 0 over the directories of the earlier trials.
            raise SystemExit(f"error: cannot resume the Optuna study in {sweeper.storage}: {error}") from error

    def _resume(self, config: DictConfig) -> None:
        import optuna
        from optuna.trial import TrialState
        from sqlalchemy.engine import make_url

        sweeper = config.hydra.sweeper
        url = make_url(sweeper.storage)
        if url.get_backend_name() == "sqlite" and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        if sweeper.study_name is None:
            raise ValueError("hydra.sweeper.study_name is null: name the study, so that the next run finds it")
        try:
            study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        except KeyError:
            return  # a new study: the sweeper creates it

        trials = study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                study.tell(trial.number, state=TrialState.FAIL)
                log.info("trial %d of study %s was interrupted: marked failed", trial.number, sweeper.study_name)
        done = sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in trials)
        remaining = max(sweeper.n_trials - done, 0)
        log.info(
            "resuming study %s: %d of %d trials done (complete or pruned), running %d more",
            sweeper.study_name,
            done,
            sweeper.n_trials,
            remaining,
        )
        sweeper.n_trials = remaining
        if sweeper.sampler.get("seed") is not None:
            sweeper.sampler.seed += len(trials)

        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]
        if JOB_NUMBER in subdir:
            # Each job's config is composed again from hydra.overrides.hydra, not from this config.
            subdir = subdir.replace(JOB_NUMBER, f"${{ser.add:{JOB_NUMBER},{len(trials)}}}")
            config.hydra.sweep.subdir = subdir
            config.hydra.overrides.hydra.append(
                f"hydra.sweep.subdir='{subdir}'"
            )  # quoted: the override grammar refuses nested ${}

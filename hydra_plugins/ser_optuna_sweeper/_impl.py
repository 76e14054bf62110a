"""Runs an Optuna study as a Hydra multirun, written against Optuna's ask-and-tell interface (Optuna 4 and 5).

hydra-optuna-sweeper 1.3.0, the last release of Hydra's own plugin, requires ``optuna<3``; its port to
Optuna 4 is unreleased. This sweeper keeps that plugin's configuration (``params`` in Hydra's override
grammar, ``n_trials``, ``n_jobs``, ``storage``, ``study_name``, ``max_failure_rate``, a sampler) and adds a
pruner: trials that the launcher runs in this process (Hydra's basic launcher) can report each
validation to the study through :mod:`ser.pruning` and be stopped there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ser import atomic
from ser.errors import UserError, first_line
from ser.pruning import offer_trials

log = logging.getLogger(__name__)


class TrialFailedError(RuntimeError):
    """More trials failed than ``hydra.sweeper.max_failure_rate`` allows."""


class SweeperConfigError(UserError):
    """A ``hydra.sweeper`` setting, ``params`` entry or command-line sweep that this sweeper cannot run."""


def distribution_of(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override: ``choice``/``a,b`` -> categorical, ``range`` -> int
    (or categorical for float steps), ``interval`` -> float, or int with ``tag(int, ...)``, log-scaled with
    ``tag(log, ...)``."""
    value = override.value()
    if isinstance(value, ChoiceSweep) or override.is_choice_sweep():
        # encode keeps strings as the override grammar writes them, so that a choice goes back verbatim
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise SweeperConfigError(
                f"{override.input_line}: the range is empty: give range(start, stop) with start < stop"
            )
        if all(isinstance(v, int) for v in values) and value.step > 0:
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return CategoricalDistribution(values)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra parses interval(1, 8) into floats
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise SweeperConfigError(
        f"{override.input_line}: Optuna cannot sample this sweep: use choice(), range() or interval()"
    )


def search_space(
    params: dict[str, str] | None, arguments: Sequence[str], config_loader: ConfigLoader | None = None
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions to sample and the fixed overrides of every job.

    ``params`` (from the config) comes first; a command-line argument for the same key replaces it: a
    single value fixes the key, a sweep replaces its range.
    """
    parser = OverridesParser.create(config_loader)  # the loader lists a group's options for glob(...)
    configured = parser.parse_overrides([f"{key}={value}" for key, value in (params or {}).items()])
    entries: dict[str, Override] = {override.get_key_element(): override for override in configured}
    for override in parser.parse_overrides(list(arguments)):
        entries[override.get_key_element()] = override
    distributions, fixed = {}, []
    for key, override in entries.items():
        if override.is_sweep_override():
            distributions[key] = distribution_of(override)
        else:
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return distributions, fixed


def trial_overrides(trial: optuna.trial.BaseTrial, fixed: list[str]) -> list[str]:
    return [*fixed, *(f"{key}={value}" for key, value in trial.params.items())]


class OptunaSweeperImpl:
    def __init__(
        self,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | dict | None,
    ) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else params
        self.job_idx = 0
        self.config_loader: ConfigLoader | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher: Launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.config_loader = hydra_context.config_loader

    def sweep(self, arguments: list[str]) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise SweeperConfigError(f"hydra.sweeper.direction={self.direction}: use minimize or maximize")
        if self.n_jobs < 1:
            raise SweeperConfigError(f"hydra.sweeper.n_jobs={self.n_jobs}: run at least one trial at a time")
        distributions, fixed = search_space(self.params, arguments, self.config_loader)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            pruner=self.pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        log.info("Study name: %s", study.study_name)
        log.info("Storage: %s", self.storage)
        log.info("Sampler: %s", type(self.sampler).__name__)
        log.info("Pruner: %s", type(self.pruner).__name__)
        log.info("Directions: %s", [self.direction])
        # Trials run elsewhere (SLURM, joblib's worker processes) have no trial to report to.
        prunes_in_process = isinstance(self.launcher, BasicLauncher)
        if not prunes_in_process and not isinstance(self.pruner, optuna.pruners.NopPruner):
            log.warning(
                "%s runs trials outside this process, where they cannot report to the study: trials are not pruned",
                type(self.launcher).__name__,
            )

        finished = failed = 0
        to_go = self.n_trials
        while to_go > 0:
            trials = [study.ask(fixed_distributions=distributions) for _ in range(min(self.n_jobs, to_go))]
            to_go -= len(trials)
            by_job = {self.job_idx + i: trial for i, trial in enumerate(trials)}
            with offer_trials(by_job if prunes_in_process else {}) as offered:
                returns = self.launcher.launch(
                    [trial_overrides(trial, fixed) for trial in trials], initial_job_idx=self.job_idx
                )
            self.job_idx += len(returns)
            failures = []
            for (job_num, trial), job_return in zip(by_job.items(), returns):
                offer = offered.get(job_num)
                if self._tell(study, trial, job_return, pruned=offer is not None and offer.pruned):
                    finished += 1
                else:
                    failures.append(job_return)
            failed += len(failures)
            if failures and failed / (finished + failed) > self.max_failure_rate:
                log.error(
                    "%d of %d trials failed, above hydra.sweeper.max_failure_rate=%s: stopping the search",
                    failed,
                    finished + failed,
                    self.max_failure_rate,
                )
                error = failures[-1]._return_value
                if isinstance(error, BaseException):
                    raise error  # as Hydra's own sweepers do: the job's exception ends the sweep
                raise TrialFailedError(f"the last failed trial returned {error!r}, not a finite number")
        self._write_results(study)

    def _tell(self, study: optuna.Study, trial: optuna.Trial, job_return: JobReturn, pruned: bool) -> bool:
        """Records the job's outcome in the study; False when the trial failed."""
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            return True
        if job_return.status != JobStatus.COMPLETED:
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, first_line(job_return._return_value))
            return False
        value = job_return.return_value
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            study.tell(trial, state=TrialState.FAIL)
            log.warning(
                "trial %d failed: the job returned %r, not a finite number", trial.number, job_return.return_value
            )
            return False
        study.tell(trial, value)
        return True

    def _write_results(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState},
        }
        if any(t.state == TrialState.COMPLETE for t in trials):
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("Best parameters: %s", best.params)
            log.info("Best value: %s", best.value)
        else:
            log.warning("no trial of study %s is complete: there is no best value yet", study.study_name)
        atomic.write_text(self.sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results)))

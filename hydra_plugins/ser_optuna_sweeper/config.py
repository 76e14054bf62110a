"""The sweeper's configs, registered with Hydra's ConfigStore when Hydra scans its plugins.

Kept free of Optuna imports: Hydra imports every plugin module of every program it starts. No
``from __future__ import annotations``: Hydra executes this module before it is in ``sys.modules``, where
dataclasses cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.ser_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])

    sampler: Any = MISSING  # an Optuna sampler, instantiated from its _target_
    pruner: Any = MISSING  # an Optuna pruner, instantiated from its _target_
    direction: str = "minimize"  # of the value the task function returns: minimize or maximize
    # An SQLAlchemy URL (sqlite:///path/optuna.db) keeps the study across runs; null keeps it in memory.
    storage: Any = None
    study_name: str | None = None
    n_trials: int = 20  # trials this run starts
    n_jobs: int = 1  # trials handed to the launcher at once
    max_failure_rate: float = 0.0  # the share of failed trials above which the sweep stops with the error
    # key -> search space in Hydra's override grammar: choice(a, b), range(1, 5), tag(log, interval(1e-5, 1e-3))
    params: dict[str, str] | None = None


_SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10, "multivariate": False},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None, "n_startup_trials": 1},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol", "scramble": True},
}

# n_warmup_steps and min_resource count validations: the pruning callback reports once per validation.
_PRUNERS = {
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 5,
        "n_warmup_steps": 0,
        "interval_steps": 1,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "auto",
        "reduction_factor": 3,
    },
    "threshold": {
        "_target_": "optuna.pruners.ThresholdPruner",
        "lower": None,
        "upper": None,
        "n_warmup_steps": 0,
        "interval_steps": 1,
    },
    "none": {"_target_": "optuna.pruners.NopPruner"},
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="ser_optuna", node=OptunaSweeperConf, provider="ser_optuna_sweeper")
for _name, _node in _SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="ser_optuna_sweeper")
for _name, _node in _PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="ser_optuna_sweeper")

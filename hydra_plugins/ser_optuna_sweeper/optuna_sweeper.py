"""The Hydra plugin class; the work is in ``_impl``, imported only when a sweep starts."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Asks an Optuna study for trials, runs them as Hydra jobs, and tells the study their outcome."""

    def __init__(self, **settings: Any) -> None:
        from ._impl import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from ser.errors import UserError

        try:
            return self.sweeper.sweep(arguments)
        except UserError as error:
            # Hydra would print its traceback; a user error is one line, as train.py prints it
            raise SystemExit(f"error: {error}") from None

"""Train a speech emotion classifier: ``python train.py [overrides]``, or ``-m`` for a sweep.

Examples:
    python train.py experiment=demo
    python train.py optimizer.lr=3e-5 data.split=fold data.fold=1
    python train.py -m experiment=demo optimizer.lr=1e-4,3e-4
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ser.errors import exit_on_user_error, first_line
from ser.train import train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # Hydra records an exception as this job's failure and runs the remaining jobs; SystemExit
        # would end the whole sweep. The job's own log keeps the reason for `ser summarize`.
        try:
            return train(cfg)["objective"]
        except Exception as error:
            log.exception("error: %s", first_line(error))
            raise
    with exit_on_user_error():
        return train(cfg)["objective"]


if __name__ == "__main__":
    main()

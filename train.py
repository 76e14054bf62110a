"""Train a speech emotion classifier: ``python train.py [overrides]``, or ``-m`` for a sweep.

Examples:
    python train.py experiment=demo
    python train.py optimizer.lr=3e-5 data.split=fold data.fold=1
    python train.py -m experiment=demo optimizer.lr=1e-4,3e-4
"""

import hydra
from omegaconf import DictConfig

from ser.cli import exit_on_user_error
from ser.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    with exit_on_user_error():
        return train(cfg)["objective"]


if __name__ == "__main__":
    main()

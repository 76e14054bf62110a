"""Train in this process and interrupt it for real.

``python -m tests.interrupt OVERRIDES_JSON [--at N --signal S] [--during-save K]``

``--at N --signal S`` sends signal S to this process at the start of the N-th training batch (1-based,
counted over the whole run); ``--during-save K`` kills it with SIGKILL halfway through writing the
K-th checkpoint. The tests run this as a subprocess, so the process really dies.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import pytorch_lightning as pl
import torch

import ser.train
from tests.helpers import compose_config


class SignalAtBatch(pl.Callback):
    def __init__(self, batch: int, signum: int):
        self.batch, self.signum = batch, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.batch:
            os.kill(os.getpid(), self.signum)


def kill_during_save(save_number: int) -> None:
    """Make the ``save_number``-th ``torch.save`` write half of its bytes and then SIGKILL the process."""
    real_save, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] < save_number:
            return real_save(obj, f, *args, **kwargs)
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides")
    parser.add_argument("--at", type=int)
    parser.add_argument("--signal", type=int, default=signal.SIGTERM)
    parser.add_argument("--during-save", type=int)
    args = parser.parse_args()
    if args.at is not None:
        build_callbacks = ser.train.build_callbacks
        # first in the list, so the flag is up before any other callback looks at it
        ser.train.build_callbacks = lambda *a: [SignalAtBatch(args.at, args.signal), *build_callbacks(*a)]
    if args.during_save is not None:
        kill_during_save(args.during_save)
    ser.train.train(compose_config(json.loads(args.overrides)))


if __name__ == "__main__":
    main()

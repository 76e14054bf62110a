"""Train in this process and interrupt it for real.

    python -m tests.interrupt OVERRIDES_JSON [--at N --signal S] [--during-save K]

``--at N --signal S`` sends signal S to this process at the start of the N-th training batch (1-based,
counted over the whole run); ``--during-save K`` kills it with SIGKILL halfway through writing the
K-th checkpoint. The tests run this as a subprocess, so the process really dies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal

import pytorch_lightning as pl
import torch

from ser.config import compose
from ser.train import train


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
        # AtomicCheckpointIO hands torch.save a path; Lightning's own IO hands it a file
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f) as out:
            out.write(data[: len(data) // 2])
            out.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides")
    parser.add_argument("--at", type=int)
    parser.add_argument("--signal", type=int, default=signal.SIGTERM)
    parser.add_argument("--during-save", type=int)
    args = parser.parse_args()
    # first in the Trainer's list, so the flag is up before any other callback looks at it
    callbacks = [SignalAtBatch(args.at, args.signal)] if args.at is not None else []
    if args.during_save is not None:
        kill_during_save(args.during_save)
    train(compose(json.loads(args.overrides)), callbacks=callbacks)


if __name__ == "__main__":
    main()

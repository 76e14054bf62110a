"""DDP on 2 CPU processes (gloo): the same result as one process with the same global batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ser.data.batching import LengthBucketBatchSampler

from .helpers import TRAIN_PY, run_python, tiny_run_overrides

NO_RANDOMNESS = [  # ranks draw their own dropout masks, so only a run without any can match exactly
    "model.encoder_config.hidden_dropout=0.0",
    "model.encoder_config.activation_dropout=0.0",
    "model.encoder_config.attention_dropout=0.0",
    "model.encoder_config.feat_proj_dropout=0.0",
    "model.encoder_config.mask_time_prob=0.0",
]


def train_py(args: list[str], cwd):
    return run_python([TRAIN_PY, *args], cwd, timeout=900)


@pytest.mark.slow
def test_two_cpu_processes_match_one_with_the_same_global_batch(corpus_dir, corpus_cache, tmp_path):
    common = [
        *NO_RANDOMNESS,
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.deterministic=true",
        "trainer.num_sanity_val_steps=0",
        "trainer.accumulate_grad_batches=1",
    ]
    single = tiny_run_overrides(
        corpus_dir, corpus_cache, *common, "trainer.devices=1", "data.batch_size=8", run_dir=tmp_path / "single"
    )
    ddp = tiny_run_overrides(
        corpus_dir,
        corpus_cache,
        *common,
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "data.batch_size=4",
        run_dir=tmp_path / "ddp",
    )
    first = train_py(single, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = train_py(ddp, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "world_size: 2" in second.stderr or "distributed_backend=gloo" in second.stderr

    one, two = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        for run in ("single", "ddp")
    )
    assert one["global_step"] == two["global_step"] == 8
    for key, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], value, rtol=1e-4, atol=1e-6, msg=key)

    # validation and test metrics are gathered from both ranks: the same clips, the same counts
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("single", "ddp")]
    for key in ("val/acc", "val/uar", "val/f1", "test/acc", "test/uar", "test/f1"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], abs=1e-6), key

    # rank 1 writes nothing into the run directory but its own process log
    written = {p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*") if p.is_file()}
    expected = {p.relative_to(tmp_path / "single").as_posix() for p in (tmp_path / "single").rglob("*") if p.is_file()}
    assert written - expected <= {"train_ddp_process_1.log"}, written - expected
    assert sum(1 for _ in (tmp_path / "ddp" / "csv").glob("*.csv")) == 1


def test_ranks_split_each_global_batch_of_the_bucketed_sampler():
    lengths = np.random.default_rng(0).integers(1000, 5000, size=50)
    one = list(LengthBucketBatchSampler(lengths, batch_size=8, shuffle=True, seed=3))
    shares = [list(LengthBucketBatchSampler(lengths, 4, shuffle=True, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(one)  # the same number of steps on every rank
    for step, batch in enumerate(one):
        assert sorted(shares[0][step] + shares[1][step]) == sorted(batch)


@pytest.mark.slow
def test_ddp_inside_a_multirun_is_refused_before_training(corpus_dir, corpus_cache, tmp_path):
    sweep = tmp_path / "sweep"
    args = tiny_run_overrides(
        corpus_dir, corpus_cache, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"
    )
    result = train_py(["-m", *args, "optimizer.lr=1e-4,3e-4", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode != 0
    assert "cannot run inside a Hydra multirun" in result.stderr
    assert not list(sweep.glob("*/checkpoints"))  # refused before any job trained
    assert all("cannot run inside a Hydra multirun" in (sweep / job / "train.log").read_text() for job in ("0", "1"))


@pytest.mark.slow
def test_spawned_ddp_is_refused_in_one_line(corpus_dir, corpus_cache, tmp_path):
    args = tiny_run_overrides(
        corpus_dir,
        corpus_cache,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        run_dir=tmp_path / "run",
    )
    result = train_py(args, tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: DDP with the 'spawn' start method") and "trainer.strategy=ddp" in last
    assert "Traceback" not in result.stderr

"""Interrupted runs: SIGTERM, SIGKILL and a kill during a checkpoint write, then resume.

Every interruption is real: training runs in a subprocess (tests/interrupt.py) that receives the
signal. With deterministic settings the resumed run must end with bit-identical weights.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from ser import atomic
from ser.resume import AtomicCheckpointIO, ResumeError, checkpoint_of_requeued_job, resolve_checkpoint

from .helpers import REPO, TRAIN_PY, run_python, tiny_run_overrides

BATCHES_PER_EPOCH = 6  # with accumulation 2: 3 optimizer steps per epoch, 6 in the run


def overrides(corpus: Path, cache: Path, run_dir: Path, *extra: str) -> list[str]:
    """Two short epochs, dropout and SpecAugment on, accumulation 2, last.ckpt at every step."""
    return tiny_run_overrides(
        corpus,
        cache,
        "data.batch_size=4",
        "model.encoder_config.mask_time_prob=0.2",
        "trainer.max_epochs=2",
        f"trainer.limit_train_batches={BATCHES_PER_EPOCH}",
        "trainer.limit_val_batches=2",
        "trainer.accumulate_grad_batches=2",
        "trainer.deterministic=true",
        "trainer.num_sanity_val_steps=0",
        "checkpoint.every_n_steps=1",
        "test_after_fit=false",
        *extra,
        run_dir=run_dir,
    )


def run(args: list[str], *flags: str):
    """Train with ``args`` in a child process (tests/interrupt.py), which ``flags`` interrupt."""
    return run_python(["-m", "tests.interrupt", json.dumps(args), *flags], REPO)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(corpus_dir, corpus_cache, tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    base = tmp_path_factory.mktemp("reference")
    result = run(overrides(corpus_dir, corpus_cache, base / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run"


@pytest.mark.slow
def test_sigterm_mid_window_saves_then_resumes_to_the_same_weights(corpus_dir, corpus_cache, reference, tmp_path):
    run_dir = tmp_path / "run"
    args = overrides(corpus_dir, corpus_cache, run_dir, "logger=wandb", "checkpoint.every_n_steps=null")
    # batch 3 opens the second accumulation window of epoch 0: the stop waits for batch 4
    stopped = run(args, "--at", "3", "--signal", str(int(signal.SIGTERM)))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "ckpt_path=" in stopped.stderr
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2 and saved["epoch"] == 0  # two full windows, mid-epoch
    assert not (run_dir / "metrics.json").exists()

    elsewhere = tmp_path / "unused"
    resumed = run([*args[:-1], f"run_dir={elsewhere}", f"ckpt_path={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file() and not elsewhere.exists()  # the run continued in its own directory
    assert_same_weights(weights(run_dir), weights(reference))
    assert (
        json.loads((run_dir / "metrics.json").read_text())["val/loss"]
        == json.loads((reference / "metrics.json").read_text())["val/loss"]
    )

    # one W&B run, continued: the offline directories of both processes carry the same run id
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline), offline


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["between batches", "while writing a checkpoint"])
def test_sigkill_resumes_from_the_last_whole_checkpoint(kill, corpus_dir, corpus_cache, reference, tmp_path):
    run_dir = tmp_path / "run"
    args = overrides(corpus_dir, corpus_cache, run_dir)
    # batch 5 opens epoch 0's last window (after 2 saves); the 3rd save comes at step 3, the end of epoch 0
    flags = ("--at", "5", "--signal", str(int(signal.SIGKILL))) if kill == "between batches" else ("--during-save", "3")
    killed = run(args, *flags)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2  # the checkpoint before the kill, whole
    assert not list((run_dir / "checkpoints").glob("*.tmp")) or kill == "while writing a checkpoint"

    resumed = run(args[:-1] + [f"run_dir={run_dir}", "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(weights(run_dir), weights(reference))


def test_resolve_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert resolve_checkpoint(None, run_dir) == (None, run_dir)
    with pytest.raises(ResumeError, match="ckpt_path=last"):
        resolve_checkpoint("last", run_dir)
    with pytest.raises(ResumeError, match="without checkpoints/last.ckpt"):
        resolve_checkpoint(str(run_dir), tmp_path / "new")
    last.write_bytes(b"")
    assert resolve_checkpoint("last", run_dir) == (last, run_dir)
    assert resolve_checkpoint(str(run_dir), tmp_path / "new") == (last, run_dir)
    assert resolve_checkpoint(str(last), tmp_path / "new") == (last, run_dir)
    loose = tmp_path / "model.ckpt"
    loose.write_bytes(b"")
    assert resolve_checkpoint(str(loose), tmp_path / "new") == (loose, tmp_path / "new")
    with pytest.raises(ResumeError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nothing.ckpt"), run_dir)


def test_a_requeued_slurm_job_resumes_from_its_newest_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert checkpoint_of_requeued_job(tmp_path) is None  # a first start never resumes by itself
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert checkpoint_of_requeued_job(tmp_path) == last
    hpc.write_bytes(b"")
    os.utime(last, (1, 1))
    assert checkpoint_of_requeued_job(tmp_path) == hpc
    assert checkpoint_of_requeued_job(tmp_path / "elsewhere") is None


@pytest.mark.slow
def test_ckpt_path_last_without_a_checkpoint_fails_in_one_line(tmp_path):
    result = run_python(
        [TRAIN_PY, "experiment=demo", "ckpt_path=last", f"hydra.run.dir={tmp_path}/run", "logger=none"], tmp_path
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ckpt_path=last") and "Traceback" not in result.stderr


def test_only_a_resumed_run_continues_the_w_and_b_run_of_its_directory(tmp_path):
    from ser.train import wandb_run_id

    first = wandb_run_id(tmp_path, resuming=False)
    assert (tmp_path / "wandb_run_id").read_text().strip() == first
    assert wandb_run_id(tmp_path, resuming=True) == first
    second = wandb_run_id(tmp_path, resuming=False)  # a fresh run in a reused directory
    assert second != first and wandb_run_id(tmp_path, resuming=True) == second


def test_checkpoints_and_metrics_get_the_umasks_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, checkpoint)
        metrics = atomic.write_json(tmp_path / "run" / "metrics.json", {"test/acc": 0.5})
    finally:
        os.umask(previous)
    assert checkpoint.stat().st_mode & 0o777 == 0o644 and metrics.stat().st_mode & 0o777 == 0o644
    assert torch.load(checkpoint)["state_dict"]["w"].tolist() == [1.0, 1.0]

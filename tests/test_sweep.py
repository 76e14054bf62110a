"""Sweeps end to end: the summary of a sweep with a failed job, an Optuna search killed and resumed,
and the SLURM launcher's config (composed and rendered into its sbatch script; no SLURM here)."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import submitit
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.types import HydraContext
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from ser.config import register_configs
from ser.sweep import ResumeOptunaStudy

from .helpers import CONF_DIR, TRAIN_PY, compose_config, python_command, run_python


def _summary_rows(sweep: Path) -> dict[str, dict]:
    """summary.csv's job rows by job directory name."""
    with open(sweep / "summary.csv", newline="") as handle:
        return {row["job"]: row for row in csv.DictReader(handle) if row["job"] not in ("mean", "std")}


# --- the summary of a sweep ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_failed_job_leaves_the_others_and_a_summary_that_names_it(tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_python(
        [TRAIN_PY, "-m", *tiny_overrides, "model.pooling=nosuch,mean", f"hydra.sweep.dir={sweep}"], tmp_path
    )

    assert result.returncode != 0
    assert not (sweep / "0" / "metrics.json").exists()
    assert (sweep / "1" / "metrics.json").is_file(), result.stderr[-3000:]  # the job after the failed one ran
    rows = _summary_rows(sweep)
    assert {name: row["status"] for name, row in rows.items()} == {"0": "failed", "1": "finished"}
    assert "unknown pooling 'nosuch'" in rows["0"]["reason"]
    assert float(rows["1"]["test/acc"]) == pytest.approx(
        json.loads((sweep / "1" / "metrics.json").read_text())["test/acc"]
    )
    markdown = (sweep / "summary.md").read_text()
    assert "| model.pooling=nosuch | failed: " in markdown and "| model.pooling=mean | finished |" in markdown


@pytest.mark.slow
def test_a_sweep_ends_with_its_summary_printed_once(tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_python(
        [TRAIN_PY, "-m", *tiny_overrides, "optimizer.lr=0.0001,0.0003", f"hydra.sweep.dir={sweep}"], tmp_path
    )

    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (sweep / "summary.md").read_text()
    assert "| optimizer.lr=0.0001 | finished |" in markdown and "| optimizer.lr=0.0003 | finished |" in markdown
    assert "**mean ± std** (n=2)" in markdown
    assert result.stdout.count("mean ± std") == 1  # written after each job, printed at the end only


# --- Optuna: interrupted and resumed -------------------------------------------------------------


def test_resuming_adjusts_the_sweeper_config_to_the_study_found(tmp_path):
    sweep = tmp_path / "sweep"
    cfg = compose_config(
        ["hparams_search=optuna", "hydra.sweeper.n_trials=5", f"hydra.sweep.dir={sweep}"], return_hydra_config=True
    )
    sweep.mkdir()
    study = optuna.create_study(study_name="ser", storage=cfg.hydra.sweeper.storage, direction="maximize")
    for value in (0.3, 0.4):
        study.tell(study.ask(), value)
    study.ask()  # still RUNNING: the search was killed during this trial

    ResumeOptunaStudy().on_multirun_start(config=cfg)

    study = optuna.load_study(
        study_name="ser", storage=cfg.hydra.sweeper.storage
    )  # not the cached view of the killed search
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert cfg.hydra.sweeper.n_trials == 3
    assert cfg.hydra.sweeper.sampler.seed == 42 + 3
    cfg.hydra.job.num = 0
    assert cfg.hydra.sweep.subdir == "3"  # the next trial's number
    # what each job's config is composed from (read raw, as Hydra does: the override is an interpolation)
    assert OmegaConf.to_container(cfg.hydra.overrides.hydra)[-1] == "hydra.sweep.subdir='${ser.add:${hydra.job.num},3}'"


def test_a_study_without_a_name_is_refused_before_any_job(tmp_path):
    sweep = tmp_path / "multirun" / "optuna"
    cfg = compose_config(
        ["hparams_search=optuna", "hydra.sweeper.study_name=null", f"hydra.sweep.dir={sweep}"], return_hydra_config=True
    )
    with pytest.raises(SystemExit, match=r"^error: cannot resume .*study_name is null: name the study"):
        ResumeOptunaStudy().on_multirun_start(config=cfg)
    assert sweep.is_dir()  # where the SQLite file goes, made before the sweeper opens it


def _trial_states(database: Path) -> list[tuple[int, str]]:
    """(number, state) of every trial, read without Optuna while the search writes."""
    if not database.is_file():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
        try:
            return connection.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
        except sqlite3.OperationalError:  # the tables are not created yet
            return []


def _snapshot(job_dir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(job_dir)): (p.stat().st_mtime_ns, p.stat().st_size) for p in job_dir.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_an_interrupted_optuna_search_resumes_the_same_study(tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    database = sweep / "optuna.db"
    args = [TRAIN_PY, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *tiny_overrides]
    args.append(f"hydra.sweep.dir={sweep}")

    command, env = python_command(args)
    with open(tmp_path / "first.log", "w") as log:
        search = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # kill it once trial 0 is complete and trial 1 is training (its log has begun)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and search.poll() is None:
            states = dict(_trial_states(database))
            log_1 = sweep / "1" / "train.log"
            if states.get(0) == "COMPLETE" and states.get(1) == "RUNNING" and log_1.is_file() and log_1.stat().st_size:
                break
            time.sleep(0.2)
        else:
            pytest.fail(
                "the search ended or stalled before trial 1 started:\n" + (tmp_path / "first.log").read_text()[-3000:]
            )
        search.send_signal(signal.SIGKILL)
        assert search.wait(timeout=30) == -signal.SIGKILL
    finally:
        if search.poll() is None:
            search.kill()
    assert [state for _, state in _trial_states(database)] == ["COMPLETE", "RUNNING"]  # really cut short
    before = {name: _snapshot(sweep / name) for name in ("0", "1")}

    result = run_python(args, tmp_path)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "trial 1 of study ser was interrupted: marked failed" in output
    assert "resuming study ser: 1 of 3 trials complete, running 2 more" in output
    study = optuna.load_study(study_name="ser", storage=f"sqlite:///{database}")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert {name: _snapshot(sweep / name) for name in ("0", "1")} == before  # nothing rewritten
    assert sorted(p.parent.parent.name for p in sweep.glob("*/.hydra/overrides.yaml")) == ["0", "1", "2", "3"]
    for trial in study.trials:  # job directory N ran trial N
        overrides = yaml.safe_load((sweep / str(trial.number) / ".hydra" / "overrides.yaml").read_text())
        assert {f"{name}={value}" for name, value in trial.params.items()} <= set(overrides)
    learning_rates = [trial.params["optimizer.lr"] for trial in study.trials]
    assert len(set(learning_rates)) == 4  # the resumed sampler did not draw the first trials again
    rows = _summary_rows(sweep)
    assert {name: row["status"] for name, row in rows.items()} == {
        "0": "finished",
        "1": "failed",
        "2": "finished",
        "3": "finished",
    }
    assert float(rows["2"]["objective"]) == pytest.approx(study.trials[2].value)


# --- SLURM ---------------------------------------------------------------------------------------


class _Submitted(Exception):
    """Raised instead of calling sbatch."""


def test_slurm_launcher_renders_one_array_job_of_ddp_tasks_per_sweep_point(tmp_path, monkeypatch):
    overrides = [
        "hparams_search=optuna",
        "hydra/launcher=slurm",
        "trainer=ddp",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.nodes=2",
        "hydra.launcher.partition=gpu",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # the launcher needs its loader
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        config_loader = GlobalHydra.instance().config_loader()

    assert cfg.hydra.sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    target = cfg.hydra.launcher._target_
    assert target == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    launcher = instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, get_class(target))
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)
    params = launcher.params
    assert (params["gpus_per_node"], params["tasks_per_node"], params["nodes"]) == (4, 4, 2)
    assert params["partition"] == "gpu" and params["submitit_folder"] == f"{tmp_path}/.submitit/%j"

    scripts = []

    def submit(executor, command):
        scripts.append(executor._make_submission_file_text(command, "uid"))
        raise _Submitted

    monkeypatch.setattr(submitit.SlurmExecutor, "_submit_command", submit)
    srun = tmp_path / "bin" / "srun"  # submitit refuses to start where it finds no srun
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    # the callbacks travel to the cluster inside the pickled launcher: they must pickle
    launcher.setup(
        hydra_context=HydraContext(config_loader=config_loader, callbacks=Callbacks(cfg)),
        task_function=print,
        config=cfg,
    )
    with pytest.raises(_Submitted):
        launcher.launch([["data.fold=1"], ["data.fold=2"]], initial_job_idx=0)

    [sbatch] = scripts
    lines = set(sbatch.splitlines())
    for flag in (
        "--array=0-1%2",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--nodes=2",
        "--partition=gpu",
        "--time=240",
        "--signal=USR1@180",
        "--requeue",
    ):
        assert f"#SBATCH {flag}" in lines, (flag, sbatch)
    assert "USR2" not in sbatch  # Lightning's USR1 handler saves and requeues; submitit's would restart

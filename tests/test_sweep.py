"""Sweeps end to end: the summary of a sweep with a failed job, an Optuna search killed, resumed and
pruned, the pieces of that search in process (search space, pruning callback, resume bookkeeping), and
the SLURM launcher's config (composed and rendered into its sbatch script; no SLURM here)."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import submitit
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.ser_optuna_sweeper._impl import OptunaSweeperImpl, SweeperConfigError, distribution_of, search_space
from ser.config import register_configs
from ser.pruning import PRUNED_FILE, OfferedTrial, OptunaPruning, PruningMetricError, offer_trials, pruning_callbacks
from ser.summarize import summarize
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


# --- Optuna: the pieces, in process --------------------------------------------------------------


def _override(text: str):
    [override] = OverridesParser.create().parse_overrides([text])
    return override


def test_the_search_space_is_the_config_params_with_the_command_line_on_top():
    cfg = compose_config(["hparams_search=optuna"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    arguments = ["model.pooling=mean", "model.head_dropout=interval(0.1, 0.2)", "data.fold=range(1, 7)", "seed=3"]

    distributions, fixed = search_space(params, arguments)

    assert distributions == {
        "optimizer.lr": FloatDistribution(1e-5, 3e-3, log=True),
        "model.head_dropout": FloatDistribution(0.1, 0.2),
        "model.freeze_encoder_steps": CategoricalDistribution([0, 100, 200, 400]),
        "data.fold": IntDistribution(1, 6),
    }
    assert fixed == ["model.pooling=mean", "seed=3"]  # a single value fixes a searched key
    assert distribution_of(_override("a=interval(1, 8)")) == FloatDistribution(1, 8)
    assert distribution_of(_override("a=tag(int, log, interval(1, 8))")) == IntDistribution(1, 8, log=True)
    assert distribution_of(_override("a=x,y")) == CategoricalDistribution(["x", "y"])
    with pytest.raises(SweeperConfigError, match="range is empty"):
        distribution_of(_override("a=range(5, 1)"))


def test_a_bad_sweeper_setting_ends_the_sweep_in_one_line_before_any_trial():
    from hydra_plugins.ser_optuna_sweeper.optuna_sweeper import OptunaSweeper

    settings = dict(storage=None, study_name="s", n_trials=2, max_failure_rate=0.0, params=None)
    sweeper = OptunaSweeper(sampler=None, pruner=None, direction="sideways", n_jobs=1, **settings)
    with pytest.raises(SystemExit, match=r"^error: hydra.sweeper.direction=sideways: use minimize or maximize$"):
        sweeper.sweep([])
    sweeper = OptunaSweeper(sampler=None, pruner=None, direction="maximize", n_jobs=1, **settings)
    with pytest.raises(SystemExit, match=r"^error: data.fold=range\(5, 1\): the range is empty"):
        sweeper.sweep(["data.fold=range(5, 1)"])


def _validation(trainer_metrics: dict[str, float]):
    """The trainer as the pruning callback sees it after a validation."""
    import torch

    return SimpleNamespace(
        sanity_checking=False,
        should_stop=False,
        current_epoch=0,
        callback_metrics={k: torch.tensor(v) for k, v in trainer_metrics.items()},
    )


def _completed(study: optuna.Study, values: list[float]) -> None:
    """Trials that reported one validation each and completed with that value."""
    for value in values:
        trial = study.ask()
        trial.report(value, 0)
        study.tell(trial, value)


def test_the_pruning_callback_stops_a_trial_that_falls_behind_and_the_study_records_it_pruned(tmp_path):
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    )
    _completed(study, [0.5, 0.7])  # median 0.6
    behind, ahead = OfferedTrial(study.ask()), OfferedTrial(study.ask())
    trainers = {}
    for name, offered, uar in (("behind", behind, 0.25), ("ahead", ahead, 0.65)):
        (tmp_path / name).mkdir()
        trainers[name] = _validation({"val/uar": uar, "val/loss": 1.0})
        OptunaPruning(offered, "val/uar", tmp_path / name).on_validation_end(trainers[name], None)

    assert behind.pruned and trainers["behind"].should_stop  # stops as early stopping does: no exception
    assert json.loads((tmp_path / "behind" / PRUNED_FILE).read_text()) == {
        "trial": 2,
        "validation": 0,
        "epoch": 0,
        "val/uar": pytest.approx(0.25),
    }
    assert not ahead.pruned and not trainers["ahead"].should_stop and not (tmp_path / "ahead" / PRUNED_FILE).exists()

    sweeper = OptunaSweeperImpl(None, None, "maximize", None, "s", 4, 1, 0.0, None)
    finished = JobReturn(status=JobStatus.COMPLETED, _return_value=0.6)  # a pruned job's train() ends normally
    assert sweeper._tell(study, behind.trial, finished, pruned=behind.pruned)
    assert sweeper._tell(study, ahead.trial, JobReturn(status=JobStatus.COMPLETED, _return_value=0.66), pruned=False)
    trials = study.get_trials()
    assert [t.state for t in trials[2:]] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert trials[2].value == pytest.approx(0.25)  # its last report, not what train() returned
    assert trials[3].value == pytest.approx(0.66)

    with pytest.raises(PruningMetricError, match=r"^cannot prune on objective=val/f1: validation logs val/loss"):
        OptunaPruning(OfferedTrial(study.ask()), "val/f1", tmp_path).on_validation_end(
            _validation({"val/loss": 1.0}), None
        )


def test_a_failed_or_non_finite_job_is_a_failed_trial():
    study = optuna.create_study(direction="maximize")
    sweeper = OptunaSweeperImpl(None, None, "maximize", None, "s", 4, 1, 0.0, None)
    assert not sweeper._tell(
        study, study.ask(), JobReturn(status=JobStatus.FAILED, _return_value=ValueError("x")), False
    )
    assert not sweeper._tell(
        study, study.ask(), JobReturn(status=JobStatus.COMPLETED, _return_value=float("nan")), False
    )
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


def test_only_the_job_a_trial_is_offered_to_gets_a_pruning_callback(tmp_path):
    cfg = compose_config(["hparams_search=optuna", "hydra.job.num=3", f"run_dir={tmp_path}"], return_hydra_config=True)
    trial = optuna.create_study().ask()
    HydraConfig.instance().set_config(cfg)
    try:
        assert pruning_callbacks(cfg) == []  # no trial offered: a plain run or a grid sweep
        with offer_trials({2: optuna.create_study().ask()}):
            assert pruning_callbacks(cfg) == []  # another job's trial
        with offer_trials({3: trial}) as offered:
            [callback] = pruning_callbacks(cfg)
            assert callback.offered is offered[3] and callback.monitor == "val/uar"
            assert callback.run_dir == tmp_path
        assert pruning_callbacks(cfg) == []  # the batch is over
    finally:
        HydraConfig.instance().cfg = None


def test_a_pruned_job_is_summarized_as_pruned_and_left_out_of_the_mean(tmp_path):
    for job, uar, pruned in (("0", 0.5, False), ("1", 0.1, True), ("2", 0.7, False)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={job}\n")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"objective": uar}))
        if pruned:
            (tmp_path / job / PRUNED_FILE).write_text(json.dumps({"trial": 1, "validation": 2, "val/uar": 0.125}))

    summary = summarize(tmp_path, metrics=["objective"], quiet=True)

    assert [job.status for job in summary.jobs] == ["finished", "pruned", "finished"]
    assert summary.mean["objective"] == pytest.approx(0.6)
    assert "| optimizer.lr=1 | pruned: after validation 2 (val/uar 0.1250) |" in (tmp_path / "summary.md").read_text()
    assert _summary_rows(tmp_path)["1"]["status"] == "pruned"


def test_resuming_adjusts_the_sweeper_config_to_the_study_found(tmp_path):
    sweep = tmp_path / "sweep"
    cfg = compose_config(
        ["hparams_search=optuna", "hydra.sweeper.n_trials=5", f"hydra.sweep.dir={sweep}"], return_hydra_config=True
    )
    sweep.mkdir()
    study = optuna.create_study(study_name="ser", storage=cfg.hydra.sweeper.storage, direction="maximize")
    for value in (0.3, 0.4):
        study.tell(study.ask(), value)
    pruned = study.ask()
    pruned.report(0.1, 0)
    study.tell(pruned, state=TrialState.PRUNED)
    study.ask()  # still RUNNING: the search was killed during this trial

    ResumeOptunaStudy().on_multirun_start(config=cfg)

    study = optuna.load_study(
        study_name="ser", storage=cfg.hydra.sweeper.storage
    )  # not the cached view of the killed search
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert cfg.hydra.sweeper.n_trials == 2  # pruned trials count as done, the failed one runs again
    assert cfg.hydra.sweeper.sampler.seed == 42 + 4
    cfg.hydra.job.num = 0
    assert cfg.hydra.sweep.subdir == "4"  # the next trial's number
    # what each job's config is composed from (read raw, as Hydra does: the override is an interpolation)
    assert OmegaConf.to_container(cfg.hydra.overrides.hydra)[-1] == "hydra.sweep.subdir='${ser.add:${hydra.job.num},4}'"


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
def test_an_interrupted_optuna_search_resumes_the_same_study_and_prunes(tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    database = sweep / "optuna.db"
    args = [
        TRAIN_PY,
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        *tiny_overrides,
        f"hydra.sweep.dir={sweep}",
    ]
    # The first run prunes nothing, so that trial 0 completes; the resumed one prunes every trial at its
    # first validation (no val/uar reaches 1.01), so that pruning does not hang on which trial is worse.
    first_args = [*args, "hydra/sweeper/pruner=none"]
    resumed_args = [*args, "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01"]

    command, env = python_command(first_args)
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

    result = run_python(resumed_args, tmp_path)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]  # pruning is no failure
    output = result.stdout + result.stderr
    assert "trial 1 of study ser was interrupted: marked failed" in output
    assert "resuming study ser: 1 of 3 trials done (complete or pruned), running 2 more" in output
    assert "Traceback" not in output
    study = optuna.load_study(study_name="ser", storage=f"sqlite:///{database}")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL", "PRUNED", "PRUNED"]
    for number in (2, 3):
        job_log = (sweep / str(number) / "train.log").read_text()
        assert f"trial {number} pruned after validation 0 (epoch 0): val/uar" in job_log
        assert "Traceback" not in job_log and "error" not in job_log.lower()  # train() ended normally
        assert study.trials[number].intermediate_values.keys() == {0}
        assert study.trials[number].value == study.trials[number].intermediate_values[0]
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
        "2": "pruned",
        "3": "pruned",
    }
    assert float(rows["0"]["objective"]) == pytest.approx(study.trials[0].value)
    assert rows["2"]["reason"].startswith("after validation 0 (val/uar ")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_trial"] == 0 and results["best_value"] == pytest.approx(study.trials[0].value)
    assert results["trials"] == {"running": 0, "waiting": 0, "complete": 1, "pruned": 2, "fail": 1}


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

    assert cfg.hydra.sweeper._target_ == "hydra_plugins.ser_optuna_sweeper.optuna_sweeper.OptunaSweeper"
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

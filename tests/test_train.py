"""Training end to end: config composition, train(cfg), the run directory, W&B offline, clear errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from ser.config import objective_metric
from ser.module import SERModule
from ser.train import build_datamodule, build_logger, build_module, build_trainer, train

from .helpers import CONF_DIR, REPO, TINY_ENCODER, TRAIN_PY, compose_config, run_python

# --- composition ---------------------------------------------------------------------------------


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_default_config_is_the_model_cards_recipe():
    cfg = compose_config([])
    assert cfg.model.encoder == "jonatasgrosman/wav2vec2-large-xlsr-53-english"
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, cfg.optimizer.lr) == (4, 2, 1e-4)
    assert (cfg.optimizer.name, list(cfg.optimizer.betas), cfg.optimizer.eps) == ("adam", [0.9, 0.999], 1e-8)
    assert (cfg.scheduler.name, cfg.trainer.max_epochs, cfg.seed, cfg.data.split) == ("linear", 3, 42, "random")
    assert cfg.model.head == "hf" and cfg.model.pooling == "mean" and cfg.model.freeze_feature_encoder
    assert cfg.logger.name == "wandb"


def test_a_mistyped_key_or_wrong_type_fails_at_composition():
    with pytest.raises(Exception, match="optimizer.lrr|lrr"):
        compose_config(["optimizer.lrr=1e-4"])
    with pytest.raises(Exception, match="batch_size"):
        compose_config(["data.batch_size=four"])


@pytest.fixture(scope="session")
def local_encoder(tmp_path_factory) -> str:
    """A CTC checkpoint saved like jonatasgrosman/wav2vec2-large-xlsr-53-english, in miniature."""
    path = tmp_path_factory.mktemp("encoder") / "wav2vec2-ctc"
    config = Wav2Vec2Config(**{k: v for k, v in TINY_ENCODER.items() if k != "model_type"}, vocab_size=12)
    Wav2Vec2ForCTC(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "group", ["model", "optimizer", "scheduler", "trainer", "logger", "checkpoint", "data", "experiment"]
)
def test_every_option_of_every_group_composes_and_instantiates(group, local_encoder, corpus_dir, tmp_path):
    for option in _options(group):
        overrides = [
            f"{group}={option}",
            f"run_dir={tmp_path / option}",
            f"data.root={corpus_dir}",
            "data.synthesize_actors=null",
        ]
        if group != "model" or option != "tiny":
            overrides.append(f"model.encoder={local_encoder}")  # the Hub is out of reach: a local stand-in
        cfg = compose_config(overrides)
        if cfg.model.encoder_config is None:
            module = build_module(cfg)
            assert isinstance(module, SERModule)
        else:
            with open_dict(cfg):
                cfg.model.encoder = None
            assert isinstance(build_module(cfg), SERModule)
        datamodule = build_datamodule(cfg, tmp_path / option)
        assert datamodule.batch_size == cfg.data.batch_size
        logger = build_logger(cfg, tmp_path / option)
        if cfg.logger.name == "wandb":
            assert logger._wandb_init["mode"] == "offline"  # WANDB_MODE=offline from conftest
        else:
            assert (logger is False) == (cfg.logger.name == "none")


def test_objective_follows_the_checkpoint_monitor_unless_set():
    assert objective_metric(compose_config([])) == "val/uar"
    assert objective_metric(compose_config(["checkpoint.monitor=val/acc"])) == "val/acc"
    assert objective_metric(compose_config(["checkpoint.monitor=val/acc", "objective=val/f1"])) == "val/f1"


def test_the_layers_only_point_down(capsys):
    """The import-linter contracts of setup.cfg: data below models, Hydra-free inference, the CLI a leaf."""
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(REPO / "setup.cfg"), no_cache=True) == 0, capsys.readouterr().out


def test_model_overrides_reach_the_module(cfg_train):
    with open_dict(cfg_train):
        cfg_train.model.pooling = "attentive"
        cfg_train.model.head = "dense_tanh"
        cfg_train.optimizer.lr = 3e-4
    module = build_module(cfg_train)
    assert module.hparams.pooling == "attentive" and module.hparams.head == "dense_tanh" and module.hparams.lr == 3e-4


# --- training ------------------------------------------------------------------------------------


def test_train_writes_a_complete_run_directory(cfg_train, capsys):
    with open_dict(cfg_train):
        cfg_train.trainer.enable_progress_bar = True  # stdout is not a terminal here: one line per epoch
    metrics = train(cfg_train)
    epoch_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == cfg_train.trainer.max_epochs, epoch_lines
    assert re.fullmatch(r"epoch 1/\d+ step \d+ train/loss \d+\.\d{4} .*val/uar \d\.\d{4} .*\(\d+ s\)", epoch_lines[0])
    run = Path(cfg_train.run_dir)
    for name in (
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.json",
        "confusion_matrix.png",
        "curves.png",
        "split.csv",
    ):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("test/acc", "test/uar", "test/f1", "test/recall/angry", "test/f1/surprised", "protocol", "objective"):
        assert key in saved
    assert saved["protocol"].startswith("speaker-independent")
    assert metrics["objective"] == pytest.approx(saved["best/val/uar"])

    # the checkpoint needs neither Hydra nor the encoder's source
    module = SERModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt", map_location="cpu").eval()
    waveforms = torch.randn(2, 8000)
    with torch.no_grad():
        assert module(waveforms).shape == (2, 8)


@pytest.mark.slow
def test_compile_trains_a_compiled_encoder_and_saves_plain_names(cfg_train):
    with open_dict(cfg_train):
        cfg_train.compile = True
        cfg_train.test_after_fit = False
        cfg_train.trainer.limit_train_batches = 2
        cfg_train.trainer.limit_val_batches = 0  # evaluation would compile the encoder a second time, in eval mode
    module, datamodule = build_module(cfg_train), build_datamodule(cfg_train, Path(cfg_train.run_dir))
    seen = {}

    class Check(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.setdefault("compiled", "forward" in vars(pl_module.model.encoder))
            seen.setdefault("loss", float(outputs["loss"]))

    trainer = build_trainer(cfg_train, Path(cfg_train.run_dir), logger=None, callbacks=[Check()])
    trainer.fit(module, datamodule=datamodule)
    assert seen["compiled"] and math.isfinite(seen["loss"])
    assert "forward" not in vars(module.model.encoder)  # the plain forward is back after fitting
    trainer.save_checkpoint(Path(cfg_train.run_dir) / "compiled.ckpt")
    saved = torch.load(Path(cfg_train.run_dir) / "compiled.ckpt", weights_only=False)["state_dict"]
    assert set(saved) == set(build_module(cfg_train).state_dict())  # the names an uncompiled module loads


# --- the command line ----------------------------------------------------------------------------


@pytest.mark.slow
def test_multirun_with_wandb_offline_leaves_one_run_per_job(tiny_overrides, tmp_path):
    overrides = [o for o in tiny_overrides if not o.startswith("logger=")]
    sweep = tmp_path / "sweep"
    result = run_python(
        [
            TRAIN_PY,
            "-m",
            *overrides,
            "logger=wandb",
            "optimizer.lr=1e-4,3e-4",
            "test_after_fit=false",
            f"hydra.sweep.dir={sweep}",
            "run_dir=${hydra:runtime.output_dir}",
        ],
        tmp_path,
        env={"WANDB_MODE": None},  # the config's own choice (offline without a key) must hold, not the environment's
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 2, result.stderr[-2000:]
    assert {r.parent.parent.name for r in runs} == {"0", "1"}
    assert runs[0].name.rsplit("-", 1)[1] != runs[1].name.rsplit("-", 1)[1]  # two W&B runs, not one resumed


@pytest.mark.slow
def test_missing_encoder_fails_in_one_clear_line(tmp_path):
    result = run_python(
        [
            TRAIN_PY,
            "model.encoder=nobody/no-such-encoder",
            f"data.root={tmp_path}/none",
            "data.download=false",
            f"hydra.run.dir={tmp_path}/run",
        ],
        tmp_path,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "nobody/no-such-encoder" in last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_corpus_fails_in_one_clear_line(tmp_path, local_encoder):
    result = run_python(
        [
            TRAIN_PY,
            f"model.encoder={local_encoder}",
            f"data.root={tmp_path}/none",
            "data.download=false",
            f"hydra.run.dir={tmp_path}/run",
            "logger=none",
        ],
        tmp_path,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and f"{tmp_path}/none" in last and "Audio_Speech_Actors_01-24.zip" in last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_out_of_range_fold_fails_in_one_clear_line(tmp_path, local_encoder, corpus_dir):
    result = run_python(
        [
            TRAIN_PY,
            f"model.encoder={local_encoder}",
            f"data.root={corpus_dir}",
            "data.split=fold",
            "data.fold=7",
            f"data.cache_dir={tmp_path}/cache",
            f"hydra.run.dir={tmp_path}/run",
            "logger=none",
        ],
        tmp_path,
    )
    assert result.returncode == 1
    assert "folds 1 to 6" in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr

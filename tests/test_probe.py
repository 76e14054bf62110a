"""``ser probe``: a linear probe per layer and fold, written as probe.csv, probe.png and best_layer.json."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import pytorch_lightning as pl
import torch

from ser.cli import main
from ser.models import build_encoder, load_encoder_config
from ser.module import SERModule
from ser.probe import fit_linear_probe

from .helpers import TINY_ENCODER, write_noise_corpus


@pytest.fixture(scope="module")
def probe_corpus(tmp_path_factory):
    """Actors 1 and 11 (test actors of fold 1), 4 (of fold 2) and 2 (of fold 5): 240 noise clips."""
    return write_noise_corpus(tmp_path_factory.mktemp("probe") / "ravdess", actors=(1, 2, 4, 11))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    encoder = build_encoder(load_encoder_config(None, dict(TINY_ENCODER)), pretrained=False)
    path = tmp_path_factory.mktemp("encoder") / "tiny-wav2vec2"
    encoder.save_pretrained(path)
    return path


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_linear_probe_separates_separable_classes():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 3
    labels = torch.arange(200) % 4
    inputs = centres[labels] + torch.randn(200, 16) * 0.5
    probe = fit_linear_probe(inputs[:120], labels[:120], num_classes=4)
    with torch.no_grad():
        accuracy = (probe(inputs[120:]).argmax(dim=-1) == labels[120:]).float().mean()
    assert accuracy == 1.0


def test_probe_writes_one_row_per_layer_and_fold(probe_corpus, encoder_dir, tmp_path, capsys, caplog):
    out = tmp_path / "probe"
    argv = ["-q", "probe", str(encoder_dir), f"data.root={probe_corpus}", f"data.cache_dir={tmp_path / 'cache'}"]
    main([*argv, "--folds", "1,2", "--out", str(out)])
    rows = read_rows(out / "probe.csv")
    assert list(rows[0]) == ["layer", "fold", "WA", "UA", "F1"]
    assert sorted((int(r["layer"]), int(r["fold"])) for r in rows) == [(layer, f) for layer in range(3) for f in (1, 2)]
    assert all(0.0 <= float(r[m]) <= 1.0 for r in rows for m in ("WA", "UA", "F1"))
    assert (out / "probe.png").stat().st_size > 1000
    best = json.loads((out / "best_layer.json").read_text())
    assert best["best_layer"] in (0, 1, 2) and set(best["layers"]) == {"0", "1", "2"}
    printed = capsys.readouterr().out
    assert f"best layer: {best['best_layer']}" in printed and str(out) in printed

    with caplog.at_level(logging.INFO, logger="ser.features"):
        main([*argv, "--folds", "1", "--out", str(tmp_path / "again")])
    assert "reusing the feature cache" in caplog.text
    assert len(read_rows(tmp_path / "again" / "probe.csv")) == 3


@pytest.mark.slow  # seconds of in-process training; the quick loop tests its parts on their own
def test_probe_of_a_checkpoint_uses_its_encoder(probe_corpus, tmp_path, capsys):
    module = SERModule(encoder=None, encoder_config=dict(TINY_ENCODER), pretrained=False)
    checkpoint = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        checkpoint,
    )
    out = tmp_path / "probe"
    main(["-q", "probe", str(checkpoint), f"data.root={probe_corpus}", f"data.cache_dir={tmp_path}", "--out", str(out)])
    folds = {int(r["fold"]) for r in read_rows(out / "probe.csv")}
    assert folds == {1, 2, 5}  # every fold with a test actor in the corpus (actor 2 is in fold 5)


def test_probe_refuses_bad_arguments_in_one_line(probe_corpus, encoder_dir, tmp_path, capsys):
    base = ["-q", "probe", str(encoder_dir), f"data.root={probe_corpus}", f"data.cache_dir={tmp_path}"]
    for extra, message in [
        (["--folds", "7"], "fold 7 is out of range"),
        (["--folds", "3"], "none of fold 3's test actors"),
        (["model.pooling=max"], "ser probe takes data.KEY=VALUE overrides only"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([*base, *extra, "--out", str(tmp_path / "out")])
        assert exit_.value.code == 1
        last = capsys.readouterr().err.splitlines()[-1]  # after transformers' loading bar, if any
        assert last.startswith("error: ") and message in last

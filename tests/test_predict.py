"""Prediction, evaluation and the ``ser predict / evaluate / export`` commands, with tiny models on CPU."""

from __future__ import annotations

import contextlib
import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import ser
from ser.cli import main
from ser.data import audio
from ser.data.ravdess import EMOTIONS
from ser.inference import (
    CheckpointClassifier,
    PredictError,
    Prediction,
    Scorer,
    as_scorer,
    batch_workers,
    expand_paths,
    load_model,
    plan_batches,
    predict,
    progress_bar,
    score_waveforms,
    window_bounds,
)
from ser.models import EncoderError
from ser.module import SERModule

from .helpers import TINY_ENCODER, noise, require, save_checkpoint, tiny_module, write_noise_corpus

GROUP_NORM = {"feat_extract_norm": "group", "do_stable_layer_norm": False}  # wav2vec2-base style

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
    pytest.mark.filterwarnings("ignore:.*litlogger.*"),
]


# --- builders ------------------------------------------------------------------------------------


def own_probabilities(module: SERModule, waveform: np.ndarray) -> np.ndarray:
    """The module's own softmax on one preprocessed clip (T,), alone in its batch: (C,)."""
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(waveform))[None]).softmax(dim=-1)[0].numpy()


def probabilities_of(prediction: Prediction) -> np.ndarray:
    return np.array(list(prediction.probabilities.values()))


def hf_classifier_dir(path: Path, group_norm: bool = False, seed: int = 0):
    """A tiny transformers Wav2Vec2ForSequenceClassification in the ehcalabres layout, saved to ``path``.

    Same config keys as the published model (id2label in RAVDESS's alphabetical order, projector and
    classifier, mean pooling) and a Wav2Vec2FeatureExtractor that normalises and returns an attention
    mask (none for a group-norm encoder, as wav2vec2-base's). Returns (model, feature_extractor).
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    fields = {k: v for k, v in TINY_ENCODER.items() if k != "model_type"}
    if group_norm:
        fields.update(GROUP_NORM)
    config = Wav2Vec2Config(
        **fields,
        num_labels=len(EMOTIONS),
        id2label=dict(enumerate(EMOTIONS)),
        label2id={label: i for i, label in enumerate(EMOTIONS)},
        classifier_proj_size=16,
        use_weighted_layer_sum=False,
        final_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = Wav2Vec2ForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(std=1.0)
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=not group_norm
    )
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return model, extractor


def transformers_probabilities(model, extractor, file: Path) -> np.ndarray:
    """What transformers gives on its own for one file: decoded and resampled to 16 kHz as ser does,
    then its own feature extractor and model, one clip at a time. (C,)"""
    raw = audio.load(file, normalize=False)
    inputs = extractor(raw, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits.softmax(dim=-1)[0].numpy()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, SERModule]:
    module = tiny_module()
    return save_checkpoint(module, tmp_path_factory.mktemp("model") / "tiny.ckpt"), module


@pytest.fixture
def audio_tree(tmp_path) -> dict[str, Path]:
    """Files of several formats, rates and channel counts in a small tree."""
    files = {
        "wav": tmp_path / "clips" / "a" / "stereo48k.wav",
        "flac": tmp_path / "clips" / "b" / "mono22k.flac",
        "wav16": tmp_path / "more" / "mono16k.wav",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(files["wav"], noise(0.5, 48_000, channels=2, seed=1), 48_000)
    sf.write(files["flac"], noise(0.35, 22_050, seed=2), 22_050)
    sf.write(files["wav16"], noise(0.3, 16_000, seed=3), 16_000)
    (tmp_path / "clips" / "notes.txt").write_text("not audio")  # directories give audio files only
    return files


# --- units ----------------------------------------------------------------------------------------


def test_window_bounds_cover_the_clip_with_equal_windows():
    assert window_bounds(100, 160, 80) == [(0, 100)]  # fits in one window: the whole clip
    assert window_bounds(160, 160, 80) == [(0, 160)]
    assert window_bounds(480, 160, 80) == [(0, 160), (80, 240), (160, 320), (240, 400), (320, 480)]
    bounds = window_bounds(500, 160, 80)  # spread evenly, the last one ends at the end
    assert bounds == [(0, 160), (68, 228), (136, 296), (204, 364), (272, 432), (340, 500)]


def test_plan_batches_sorts_by_length_and_keeps_lengths_equal_when_asked():
    lengths = [5, 9, 5, 7, 9, 9, 5]
    batches = plan_batches(lengths, batch_size=2, equal_lengths=False)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)
    equal = plan_batches(lengths, batch_size=2, equal_lengths=True)
    assert sorted(i for b in equal for i in b) == list(range(7))
    assert all(len({lengths[i] for i in b}) == 1 and len(b) <= 2 for b in equal)


def test_lines_printed_while_the_progress_bar_shows_stay_on_stdout(monkeypatch, capsys):
    """`ser predict DIR --json > out.jsonl` on a terminal: the bar is on the screen, the results in the file."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich then takes stderr for a terminal
    with progress_bar(True) as bar:
        bar.add_task("Scoring", total=1)
        print('{"path": "clip.wav"}', flush=True)
    out, err = capsys.readouterr()
    assert out == '{"path": "clip.wav"}\n' and "clip.wav" not in err


def test_plan_batches_caps_the_padded_samples_of_a_batch():
    lengths = [10, 4, 4, 4, 4, 30, 9]
    batches = plan_batches(lengths, batch_size=8, equal_lengths=False, max_samples=20)
    assert sorted(i for b in batches for i in b) == list(range(7))
    # the 30-sample item exceeds the cap alone and still gets its own batch; the others pad to at most 20
    assert [[lengths[i] for i in b] for b in batches] == [[30], [10, 9], [4, 4, 4, 4]]


def test_expand_paths_files_directories_globs(audio_tree, tmp_path):
    found = expand_paths(
        [
            tmp_path / "clips",
            str(tmp_path / "more" / "*.wav"),
            audio_tree["flac"],
            tmp_path / "missing.wav",
            str(tmp_path / "nothing" / "*.wav"),
        ]
    )
    paths = [Path(p) for p, reason in found if reason is None]
    assert paths == [audio_tree["wav"], audio_tree["flac"], audio_tree["wav16"]]  # the flac named twice comes once
    reasons = {Path(p).name: reason for p, reason in found if reason is not None}
    assert reasons == {"missing.wav": "no such file or directory", "*.wav": "matches no audio file"}


def test_package_exports_the_api():
    assert ser.predict is predict and ser.load_model is load_model and ser.Prediction is Prediction
    assert ser.SERModule is SERModule


# --- predict ----------------------------------------------------------------------------------------


def test_predict_any_format_matches_the_modules_own_scores(checkpoint, audio_tree, tmp_path):
    path, module = checkpoint
    predictions = predict(path, [tmp_path / "clips", str(tmp_path / "more" / "*.wav")])
    assert [Path(p.path) for p in predictions] == [audio_tree["wav"], audio_tree["flac"], audio_tree["wav16"]]
    for prediction in predictions:
        assert prediction.error is None
        assert list(prediction.probabilities) == list(EMOTIONS)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
        assert prediction.probability == prediction.probabilities[prediction.label]
        assert len(prediction.windows) == 1 and prediction.windows[0] == prediction.probabilities
        # mixed to mono, resampled to 16 kHz and normalised as the training cache does
        expected = own_probabilities(module, audio.load(prediction.path))
        np.testing.assert_allclose(probabilities_of(prediction), expected, atol=1e-5)
    assert predictions[0].duration == pytest.approx(0.5) and predictions[1].duration == pytest.approx(0.35, abs=1e-4)
    json.dumps([p.to_dict() for p in predictions])  # plain types


def test_long_clip_is_scored_in_windows_and_averaged(checkpoint, tmp_path):
    _, module = checkpoint
    file = tmp_path / "long.wav"
    sf.write(file, noise(1.3, 16_000, seed=4), 16_000)
    (prediction,) = predict(module, [file], window_seconds=0.5, hop_seconds=0.25, batch_size=3)
    waveform = audio.load(file)  # normalised as a whole, then cut into windows
    bounds = window_bounds(len(waveform), 8000, 4000)
    assert len(bounds) == 5 and len(prediction.windows) == 5
    for window, (lo, hi) in zip(prediction.windows, bounds):
        np.testing.assert_allclose(list(window.values()), own_probabilities(module, waveform[lo:hi]), atol=1e-5)
    mean = np.mean([list(w.values()) for w in prediction.windows], axis=0)
    np.testing.assert_allclose(probabilities_of(prediction), mean, atol=1e-6)
    assert prediction.duration == pytest.approx(1.3)


def test_silence_is_trimmed_as_the_model_was_trained(tmp_path):
    module = tiny_module(trim_db=-40.0)
    file = tmp_path / "padded.wav"
    speech = noise(0.3, 16_000, seed=5)
    sf.write(file, np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(8000, np.float32)]), 16_000)
    (prediction,) = predict(module, [file])
    trimmed = audio.load(file, trim_db=-40.0)
    assert len(trimmed) < len(audio.load(file))  # the check below would pass vacuously otherwise
    np.testing.assert_allclose(probabilities_of(prediction), own_probabilities(module, trimmed), atol=1e-5)
    assert prediction.duration == pytest.approx(1.3)  # of the file, not of what was scored


def test_scores_do_not_depend_on_the_batch(checkpoint, tmp_path):
    _, module = checkpoint
    files = []
    for i, seconds in enumerate((0.21, 0.5, 0.33, 0.47, 0.26)):
        files.append(tmp_path / f"clip{i}.wav")
        sf.write(files[-1], noise(seconds, 16_000, seed=10 + i), 16_000)
    together = predict(module, files, batch_size=4)
    for file, prediction in zip(files, together):
        (alone,) = predict(module, [file], batch_size=1)
        np.testing.assert_allclose(probabilities_of(prediction), probabilities_of(alone), atol=1e-5)


def test_group_norm_module_batched_equals_each_clip_alone(tmp_path):
    module = tiny_module(encoder=GROUP_NORM)
    files = []
    for i, seconds in enumerate((0.2, 0.45, 0.3, 0.45)):
        files.append(tmp_path / f"clip{i}.wav")
        sf.write(files[-1], noise(seconds, 16_000, seed=20 + i), 16_000)
    batched = predict(module, files, batch_size=4)
    for file, prediction in zip(files, batched):
        expected = own_probabilities(module, audio.load(file))  # the clip alone, unpadded
        np.testing.assert_allclose(probabilities_of(prediction), expected, atol=1e-5)


def test_model_without_attention_mask_gets_only_equal_lengths(tmp_path):
    # A group-norm transformers classifier whose feature extractor returns no mask (wav2vec2-base):
    # predict must never pad its inputs, so batched scores are transformers' own, clip by clip.
    model, extractor = hf_classifier_dir(tmp_path / "base-like", group_norm=True)
    scorer = load_model(tmp_path / "base-like")
    assert scorer.uses_attention_mask is False
    seen = []
    logits = scorer.logits
    scorer.logits = lambda x, mask=None: seen.append((x.shape, mask)) or logits(x, mask)
    files = []
    for i, seconds in enumerate((0.2, 0.3, 0.2, 0.25, 0.3)):
        files.append(tmp_path / f"clip{i}.wav")
        sf.write(files[-1], noise(seconds, 16_000, seed=30 + i), 16_000)
    predictions = predict(scorer, files, batch_size=8)
    assert len(seen) == 3 and all(mask is None for _, mask in seen)  # one pass per length, unpadded
    for file, prediction in zip(files, predictions):
        np.testing.assert_allclose(
            probabilities_of(prediction), transformers_probabilities(model, extractor, file), atol=1e-5
        )


def test_unreadable_files_are_reported_and_the_others_scored(checkpoint, audio_tree, tmp_path):
    path, _ = checkpoint
    broken = tmp_path / "bad" / "random.wav"
    broken.parent.mkdir()
    broken.write_bytes(np.random.default_rng(0).bytes(2000))
    truncated = tmp_path / "bad" / "truncated.wav"
    sf.write(truncated, noise(0.3, 16_000), 16_000, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:-2000])
    empty = tmp_path / "bad" / "empty.flac"
    empty.write_bytes(b"")
    short = tmp_path / "bad" / "short.wav"
    sf.write(short, noise(0.001, 16_000), 16_000)  # 16 samples: fewer than one frame of the encoder needs

    predictions = predict(
        path, [audio_tree["wav"], broken, truncated, empty, short, tmp_path / "gone.wav", audio_tree["flac"]]
    )
    errors = {Path(p.path).name: p.error for p in predictions}
    assert errors["stereo48k.wav"] is None and errors["mono22k.flac"] is None
    assert errors["random.wav"].startswith("cannot be decoded")
    assert errors["truncated.wav"].startswith("truncated")
    assert errors["empty.flac"].startswith("empty file")
    assert errors["short.wav"].startswith("too short")
    assert errors["gone.wav"] == "no such file or directory"
    assert all(p.label is None and p.probabilities == {} for p in predictions if p.error)


def test_cli_predict_json_lines_and_exit_status(checkpoint, audio_tree, tmp_path, capsys, monkeypatch):
    path, _ = checkpoint
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEnot really")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "-q",
                "predict",
                str(path),
                str(audio_tree["wav"]),
                str(broken),
                str(audio_tree["flac"]),
                "--json",
                "--window",
                "0.2",
                "--hop",
                "0.1",
            ]
        )
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["stereo48k.wav", "broken.wav", "mono22k.flac"]
    assert rows[0]["error"] is None and set(rows[0]["probabilities"]) == set(EMOTIONS)
    assert len(rows[0]["windows"]) == len(window_bounds(8000, 3200, 1600))  # 0.5 s in 0.2 s windows
    assert rows[1]["error"] and rows[1]["label"] is None
    assert f"{broken}: cannot be decoded" in err and err.count("error:") == 1

    monkeypatch.chdir(tmp_path)
    main(["-q", "predict", str(path), "clips/a/stereo48k.wav"])  # all scored: no SystemExit
    out, _ = capsys.readouterr()
    assert "clips/a/stereo48k.wav" in out and "emotion" in out
    main(["-q", "predict", str(path), str(audio_tree["wav"])])  # a long path, into a pipe: whole on its line
    assert str(audio_tree["wav"]) in capsys.readouterr().out


def test_load_model_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(PredictError, match="does not exist"):
        load_model(tmp_path / "nope.ckpt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(EncoderError, match="no config.json"):
        load_model(tmp_path / "empty_dir")
    (tmp_path / "fake.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "predict", str(tmp_path / "fake.ckpt"), str(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load checkpoint") and err.count("\n") == 1


# --- evaluate ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_actor_corpus(tmp_path_factory) -> Path:
    """Read only: evaluation never writes into the corpus."""
    return write_noise_corpus(tmp_path_factory.mktemp("corpus") / "ravdess", actors=(1, 2), max_seconds=0.4)


@pytest.fixture
def small_corpus(two_actor_corpus, tmp_path) -> tuple[Path, list[str]]:
    root = two_actor_corpus
    return root, [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_metrics_figures_and_predictions(checkpoint, small_corpus, tmp_path):
    from ser.evaluate import evaluate

    path, module = checkpoint
    root, overrides = small_corpus
    metrics = evaluate(str(path), overrides, out_dir=tmp_path / "eval", progress=False)
    out = tmp_path / "eval"
    for name in ("metrics.json", "confusion_matrix.png", "per_class.png", "predictions.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["protocol"].startswith("random stratified 80%/20% split")
    assert saved["stage"] == "test" and saved["clips"] == 24 and saved["model"] == str(path)  # 20% of 120 clips
    assert {k: v for k, v in metrics.items() if k != "out_dir"} == saved

    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 24 and list(rows[0])[:3] == ["key", "true", "predicted"] and list(rows[0])[3:] == list(EMOTIONS)
    accuracy = np.mean([r["true"] == r["predicted"] for r in rows])
    assert saved["test/acc"] == pytest.approx(accuracy)
    confusion = np.array(saved["confusion_matrix"])
    assert confusion.sum() == 24 and np.trace(confusion) == round(accuracy * 24)
    recalls = [saved[f"test/recall/{label}"] for label in EMOTIONS]
    assert saved["test/uar"] == pytest.approx(np.mean(recalls))
    for row in rows[:5]:  # the cache's clips, scored as the module scores them alone
        expected = own_probabilities(module, audio.load(root / row["key"]))
        np.testing.assert_allclose([float(row[label]) for label in EMOTIONS], expected, atol=1e-5)


@pytest.mark.parametrize("preparation", [{"normalize": False}, {"trim_db": -6.0}])
def test_evaluate_prepares_the_corpus_the_models_way(preparation, small_corpus, tmp_path):
    from ser.evaluate import evaluate

    root, overrides = small_corpus
    # trained on raw amplitudes, or on trimmed clips, unlike the data config's defaults
    module = tiny_module(seed=3, **preparation)
    metrics = evaluate(module, overrides, out_dir=tmp_path / "eval", stage="val", progress=False)
    assert {key: metrics["preparation"][key] for key in preparation} == preparation
    rows = read_csv(tmp_path / "eval" / "predictions.csv")
    for row in rows[:3]:
        expected = own_probabilities(module, audio.load(root / row["key"], **preparation))
        np.testing.assert_allclose([float(row[label]) for label in EMOTIONS], expected, atol=1e-5)


def test_evaluate_scores_only_the_labels_a_model_shares_with_the_corpus(small_corpus, tmp_path):
    from ser.evaluate import evaluate

    _, overrides = small_corpus
    module = tiny_module(labels=["sad", "bored", "angry", "happy"])
    metrics = evaluate(module, overrides, out_dir=tmp_path / "eval", progress=False)
    assert metrics["labels"] == ["sad", "angry", "happy"]  # the shared ones, in the model's order
    assert metrics["left_out"] == {"model": ["bored"], "corpus": ["calm", "disgust", "fearful", "neutral", "surprised"]}
    assert metrics["scoring"] == (
        "scoring the 3 shared classes (sad, angry, happy); left out: the model's bored, "
        "the corpus's calm, disgust, fearful, neutral, surprised"
    )
    rows = read_csv(tmp_path / "eval" / "predictions.csv")
    assert {row["true"] for row in rows} <= {"sad", "angry", "happy"} and len(rows) == metrics["clips"] == 9
    assert {row["predicted"] for row in rows} <= {"sad", "angry", "happy"}  # bored is never predicted
    with pytest.raises(PredictError, match="share none with the corpus's"):
        evaluate(tiny_module(labels=["bored", "contempt"]), overrides, out_dir=tmp_path / "none", progress=False)


def test_published_layout_evaluates_as_transformers_scores_it(small_corpus, tmp_path, capsys):
    # The ehcalabres model is a standard Wav2Vec2ForSequenceClassification: `ser evaluate` must give
    # exactly the predictions transformers gives on its own, clip by clip, with its own feature extractor.
    root, overrides = small_corpus
    model, extractor = hf_classifier_dir(tmp_path / "ehcalabres-tiny")
    main(["-q", "evaluate", str(tmp_path / "ehcalabres-tiny"), *overrides, "--out", str(tmp_path / "eval")])
    printed = capsys.readouterr().out
    assert "WA (accuracy)" in printed and "UA (macro recall)" in printed and str(tmp_path / "eval") in printed

    rows = read_csv(tmp_path / "eval" / "predictions.csv")
    assert len(rows) == 24
    for row in rows:
        theirs = transformers_probabilities(model, extractor, root / row["key"])
        assert row["predicted"] == EMOTIONS[int(theirs.argmax())]
        np.testing.assert_allclose([float(row[label]) for label in EMOTIONS], theirs, atol=1e-5)


# --- export -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_exported_model_predicts_as_the_checkpoint(fmt, checkpoint, audio_tree, tmp_path, capsys):
    if fmt == "onnx":
        require("onnx", 'pip install -e ".[onnx]"')
        require("onnxruntime", 'pip install -e ".[onnx]"')
    path, _ = checkpoint
    out = tmp_path / ("exported" if fmt == "hf" else "model.onnx")
    main(["-q", "export", str(path), str(out), "--format", fmt])
    assert f"ser predict {out}" in capsys.readouterr().out
    files = list(audio_tree.values())
    exported = predict(out, files)
    original = predict(path, files)
    for a, b in zip(exported, original):
        assert a.error is None and a.label == b.label
        np.testing.assert_allclose(probabilities_of(a), probabilities_of(b), atol=1e-4)


def test_any_model_with_the_scorer_protocol_is_scored():
    class Uniform:
        name, labels, sample_rate, normalize, trim_db, uses_attention_mask, min_samples = (
            "uniform",
            ["a", "b"],
            16000,
            True,
            None,
            True,
            50,
        )

        def logits(self, waveforms, attention_mask=None):
            return torch.zeros(len(waveforms), 2)

        def inference(self):
            return contextlib.nullcontext()

    model = Uniform()
    assert isinstance(model, Scorer) and as_scorer(model) is model
    probabilities, errors = score_waveforms(model, [np.zeros(100, np.float32)] * 2 + [np.zeros(49, np.float32)])
    np.testing.assert_allclose(probabilities[:2], 0.5)
    assert errors[:2] == [None, None] and errors[2].startswith("too short") and np.isnan(probabilities[2]).all()
    with pytest.raises(PredictError, match="cannot score with a"):
        as_scorer(object())


def test_checkpoints_hf_models_and_onnx_files_are_scorers(checkpoint, tmp_path):
    from ser.hub import HFClassifier
    from ser.onnx_runtime import OnnxClassifier

    path, module = checkpoint
    scorer = load_model(path)
    assert isinstance(scorer, CheckpointClassifier) and isinstance(scorer, Scorer)
    # 40 samples: the receptive field of TINY_ENCODER's CNN
    assert scorer.labels == list(module.hparams.labels) and scorer.min_samples == 40
    hf_classifier_dir(tmp_path / "hf")
    assert isinstance(load_model(tmp_path / "hf"), HFClassifier) and isinstance(load_model(tmp_path / "hf"), Scorer)
    require("onnxruntime", 'pip install -e ".[onnx]"')
    main(["-q", "export", str(path), str(tmp_path / "onnx"), "--format", "onnx"])
    onnx = load_model(tmp_path / "onnx")  # a folder holding model.onnx
    assert isinstance(onnx, OnnxClassifier) and isinstance(onnx, Scorer)
    assert (onnx.name, onnx.labels, onnx.min_samples, onnx.trim_db) == ("onnx", scorer.labels, 40, None)


# --- threads ----------------------------------------------------------------------------------------


def test_torch_threads_take_the_idle_cores_and_restore_torchs_setting(monkeypatch):
    from ser import inference

    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda _: set(range(8)), raising=False)
    monkeypatch.setattr(inference.os, "getloadavg", lambda: (5.7, 0.0, 0.0))
    assert inference.idle_cores() == 3
    monkeypatch.setattr(inference.os, "getloadavg", lambda: (12.0, 0.0, 0.0))
    assert inference.idle_cores() == 1
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        monkeypatch.setattr(inference.os, "getloadavg", lambda: (1.2, 0.0, 0.0))  # 7 idle, but torch had 4
        with inference.torch_threads() as threads:
            assert threads == torch.get_num_threads() == 4
        monkeypatch.setattr(inference.os, "getloadavg", lambda: (6.0, 0.0, 0.0))
        with inference.torch_threads() as threads:
            assert threads == torch.get_num_threads() == 2
        with inference.torch_threads(3) as threads:
            assert threads == torch.get_num_threads() == 3
        assert torch.get_num_threads() == 4
        with pytest.raises(PredictError, match="--threads 0"):
            with inference.torch_threads(0):
                pass
    finally:
        torch.set_num_threads(before)


def test_predict_with_explicit_threads_gives_the_same_scores(checkpoint, audio_tree):
    path, _ = checkpoint
    files = list(audio_tree.values())[:3]
    one, two = predict(path, files, threads=1), predict(path, files, threads=2)
    for a, b in zip(one, two):
        assert a.error is None and a.label == b.label
        np.testing.assert_allclose(probabilities_of(a), probabilities_of(b), atol=1e-5)


def test_batches_side_by_side_score_as_one_at_a_time_and_without_autograd(checkpoint):
    path, _ = checkpoint
    scorer = load_model(path)
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in (8000, 3000, 5000, 3000, 30, 7000)]
    calls, real_logits = [], scorer.logits

    def logits(batch, mask=None):
        calls.append((threading.get_ident(), torch.is_grad_enabled(), torch.get_num_threads()))
        return real_logits(batch, mask)

    scorer.logits = logits
    progress, threads = [], torch.get_num_threads()
    with scorer.inference():
        one_at_a_time, errors_one = score_waveforms(scorer, waveforms, batch_size=1)
        side_by_side, errors = score_waveforms(
            scorer, waveforms, batch_size=1, workers=2, on_batch=lambda n: progress.append((n, threading.get_ident()))
        )
    np.testing.assert_allclose(side_by_side, one_at_a_time, atol=1e-6)  # the too-short clip is NaN in both
    assert errors == errors_one and errors[4].startswith("too short")
    assert progress == [(1, threading.get_ident())] * 5  # reported in the calling thread
    assert torch.get_num_threads() == threads
    main_thread = threading.get_ident()
    assert len(calls) == 10 and {call[0] for call in calls[:5]} == {main_thread}
    assert main_thread not in {call[0] for call in calls[5:]}
    assert {call[2] for call in calls[5:]} == {1}  # one torch thread per batch, the caller's restored after
    assert not any(call[1] for call in calls)  # inference mode is per thread: the workers enter it themselves
    assert (batch_workers(scorer, 2), batch_workers(scorer, 1)) == (2, 1)


def test_an_interrupted_batch_stops_the_batches_not_yet_started():
    import time

    attempted = []

    class Interrupted:
        name, labels, sample_rate, normalize, trim_db, uses_attention_mask, min_samples = (
            "interrupted",
            ["a", "b"],
            16000,
            True,
            None,
            True,
            1,
        )

        def logits(self, waveforms, attention_mask=None):
            attempted.append(len(waveforms))
            if len(attempted) == 1:
                raise KeyboardInterrupt  # Ctrl-C reaches the first batch
            time.sleep(0.05)
            return torch.zeros(len(waveforms), 2)

        def inference(self):
            return contextlib.nullcontext()

    with pytest.raises(KeyboardInterrupt):
        score_waveforms(Interrupted(), [np.zeros(100, np.float32)] * 40, batch_size=1, workers=2)
    assert len(attempted) < 10  # of 40 batches

"""Hugging Face interchange and export: published classifiers in, transformers and ONNX models out.

Everything is built locally from tiny wav2vec 2.0 configs (the Hub is never reached): a published
classifier is a `Wav2Vec2ForSequenceClassification` saved with `save_pretrained` in the layout of
ehcalabres/wav2vec2-lg-xlsr-en-speech-emotion-recognition, a trained model is a Lightning checkpoint
of a tiny SERModule after one step.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import (
    BertConfig,
    BertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForSequenceClassification,
    pipeline,
)

from ser.data.audio import to_model_input
from ser.data.ravdess import EMOTIONS
from ser.errors import UserError
from ser.export import ExportError, export_hf, export_onnx
from ser.hub import HFClassifier, architecture_of, init_from_pretrained, load_hf_classifier, map_labels
from ser.inference import load_model
from ser.models import EncoderError
from ser.module import SERModule
from ser.onnx_runtime import OnnxClassifier

from .helpers import TINY_ENCODER, save_checkpoint

# the shared tiny encoder without its norm settings, which these tests vary
TINY = {k: v for k, v in TINY_ENCODER.items() if k not in ("model_type", "feat_extract_norm", "do_stable_layer_norm")}
TINY["vocab_size"] = 12
LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}  # XLSR-53, the published model
GROUP_NORM = {"feat_extract_norm": "group", "do_stable_layer_norm": False}  # wav2vec2-base
QUIET = {"layerdrop": 0.0, "mask_time_prob": 0.0}  # one training step that changes every layer the same way each run
RATE = 16_000
EHCALABRES_LABELS = dict(enumerate(EMOTIONS))  # 0 angry, 1 calm, ..., 7 surprised

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings(
        "ignore:.*(number of training batches|no `val_dataloader`|dataloader is not resumable).*"
    ),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
]


# --- builders ---------------------------------------------------------------------------------------


def clips(lengths, seed: int = 0) -> list[np.ndarray]:
    """Raw 'audio' (not normalised: an offset and a scale) of the given lengths, float32."""
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal(n) + 0.05).astype(np.float32) for n in lengths]


def model_batch(raw: list[np.ndarray], normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """What ser feeds a model: each clip prepared by to_model_input, zero padded (B, T), mask (B, T) bool."""
    prepared = [to_model_input(clip, RATE, RATE, normalize=normalize) for clip in raw]
    total = max(len(clip) for clip in prepared)
    waveforms = torch.zeros(len(prepared), total)
    mask = torch.zeros(len(prepared), total, dtype=torch.bool)
    for i, clip in enumerate(prepared):
        waveforms[i, : len(clip)] = torch.from_numpy(clip)
        mask[i, : len(clip)] = True
    return waveforms, mask


def make_module(norm=LAYER_NORM, **kwargs) -> SERModule:
    torch.manual_seed(0)
    kwargs.setdefault("projector_dim", 16)
    return SERModule(
        encoder=None,
        pretrained=False,
        encoder_config={"model_type": "wav2vec2", **TINY, **norm, **QUIET},
        scheduler="constant",
        labels=EMOTIONS,
        sample_rate=RATE,
        normalize=True,
        **kwargs,
    )


def trained_checkpoint(module: SERModule, path):
    """A Lightning checkpoint of `module` after one optimizer step."""
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    waveforms, mask = model_batch(clips([1600, 1100]))
    batches = [
        {"waveforms": waveforms, "attention_mask": mask, "labels": torch.tensor([0, 5]), "index": torch.arange(2)}
    ]
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory: checkpoints/last.ckpt (head hf, mean pooling, layer norm) and metrics.json."""
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    path = trained_checkpoint(make_module(), run / "checkpoints" / "last.ckpt")
    metrics = {
        "protocol": "EmoBox speaker-independent fold 1 of 6",
        "test/acc": 0.5,
        "test/uar": 0.45,
        "test/f1": 0.4,
        "checkpoint": str(path),
    }
    metrics.update({f"test/recall/{label}": 0.5 for label in EMOTIONS})
    (run / "metrics.json").write_text(json.dumps(metrics))
    return path


def published_classifier(folder, id2label=EHCALABRES_LABELS, norm=LAYER_NORM, seed: int = 0, **fields):
    """A Wav2Vec2ForSequenceClassification in the published ehcalabres layout, saved with save_pretrained.

    ``fields`` replace those of the tiny encoder's config.
    """
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        **{**TINY, **fields},
        **norm,
        classifier_proj_size=256,
        use_weighted_layer_sum=False,
        final_dropout=0.0,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = Wav2Vec2ForSequenceClassification(config).eval()
    # transformers initialises the head with zero biases; random ones show whether rows follow labels
    with torch.no_grad():
        model.classifier.bias.normal_()
    model.save_pretrained(folder)
    mask = norm is LAYER_NORM
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True, return_attention_mask=mask
    ).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def ehcalabres(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ehcalabres")
    return folder, published_classifier(folder)


def transformers_logits(model, folder, raw: list[np.ndarray]) -> torch.Tensor:
    """What transformers gives for a batch of raw clips, with the checkpoint's own feature extractor."""
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    inputs = extractor(raw, sampling_rate=RATE, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


# --- export to transformers ----------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [LAYER_NORM, GROUP_NORM], ids=["layer_norm", "group_norm"])
def test_export_hf_gives_the_same_probabilities_in_the_pipeline(tmp_path, trained_run, norm):
    checkpoint = trained_run
    if norm is GROUP_NORM:
        checkpoint = trained_checkpoint(make_module(GROUP_NORM), tmp_path / "gn.ckpt")
    module = SERModule.load_from_checkpoint(checkpoint).eval()
    out = export_hf(checkpoint, tmp_path / "exported")

    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    config = json.loads((out / "config.json").read_text())
    assert {int(i): label for i, label in config["id2label"].items()} == EHCALABRES_LABELS
    assert config["architectures"] == ["Wav2Vec2ForSequenceClassification"]
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["return_attention_mask"] is (norm is LAYER_NORM)  # group norm must see clips unpadded, unmasked
    assert preprocessor["do_normalize"] is True and preprocessor["sampling_rate"] == RATE

    classify = pipeline("audio-classification", model=str(out), top_k=None, device="cpu")
    for clip in clips([3000, 2200], seed=4):
        results = classify({"raw": clip, "sampling_rate": RATE})  # arrays: the pipeline decodes paths with ffmpeg
        waveforms, mask = model_batch([clip])
        with torch.no_grad():
            probs = module(waveforms, mask).softmax(dim=-1)[0]
        theirs = {r["label"]: r["score"] for r in results}
        assert results[0]["label"] == EMOTIONS[int(probs.argmax())]
        np.testing.assert_allclose([theirs[label] for label in EMOTIONS], probs.numpy(), atol=1e-4)

    # and ser reads the export back (`ser predict` on the directory): a padded batch, same logits
    classifier = load_hf_classifier(out)
    assert (classifier.labels, classifier.sample_rate, classifier.normalize) == (list(EMOTIONS), RATE, True)
    waveforms, mask = model_batch(clips([3000, 2200], seed=4))
    with torch.no_grad():
        torch.testing.assert_close(classifier(waveforms, mask), module(waveforms, mask), atol=1e-5, rtol=0)


def test_export_hf_writes_a_model_card_with_the_runs_metrics(tmp_path, trained_run):
    card = (export_hf(trained_run, tmp_path / "card") / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card
    assert "EmoBox speaker-independent fold 1 of 6" in card and "0.4500" in card  # protocol and UA
    assert all(f"| {i} | {label} |" in card for i, label in enumerate(EMOTIONS))
    assert 'pipeline("audio-classification"' in card


def test_export_hf_refuses_a_non_empty_output_unless_overwrite(tmp_path, trained_run):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists.*overwrite=True"):
        export_hf(trained_run, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_hf(trained_run, out, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directory left behind


@pytest.mark.parametrize(("head", "pooling"), [("dense_tanh", "mean"), ("hf", "attentive"), ("hf", "stats")])
def test_export_hf_refuses_heads_transformers_lacks(tmp_path, head, pooling):
    checkpoint = save_checkpoint(make_module(head=head, pooling=pooling), tmp_path / "x.ckpt")
    with pytest.raises(
        ExportError, match=f"head '{head}' with '{pooling}' pooling cannot be exported to transformers.*ONNX"
    ) as err:
        export_hf(checkpoint, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_hf(tmp_path / "nope.ckpt", tmp_path / "out")
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(tmp_path / "nope.ckpt", tmp_path / "out.onnx")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ExportError, match="is not a ser checkpoint") as err:
        export_hf(garbage, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# --- published classifiers: scoring ----------------------------------------------------------------------


def test_load_hf_classifier_scores_as_transformers(ehcalabres):
    folder, model = ehcalabres
    classifier = load_hf_classifier(str(folder))
    assert isinstance(classifier, HFClassifier)
    assert classifier.labels == list(EMOTIONS)
    assert (classifier.sample_rate, classifier.normalize, classifier.uses_attention_mask) == (RATE, True, True)

    raw = clips([2400, 1500], seed=1)  # two lengths: the shorter one is padded and masked
    waveforms, mask = model_batch(raw)
    with torch.no_grad():
        ours = classifier(waveforms, mask)
    torch.testing.assert_close(ours, transformers_logits(model, folder, raw), atol=1e-5, rtol=0)


def test_load_hf_classifier_scores_group_norm_clips_alone(tmp_path):
    # wav2vec2-base style: no attention mask, so padding would change a clip's logits
    model = published_classifier(tmp_path, norm=GROUP_NORM)
    classifier = load_hf_classifier(tmp_path)
    assert classifier.uses_attention_mask is False
    raw = clips([2400, 1500], seed=2)
    waveforms, mask = model_batch(raw)
    with torch.no_grad():
        ours = classifier(waveforms, mask)
    alone = torch.cat([transformers_logits(model, tmp_path, [clip]) for clip in raw])  # the pipeline's way
    torch.testing.assert_close(ours, alone, atol=1e-5, rtol=0)


def test_load_hf_classifier_errors_are_one_line(tmp_path):
    ctc = tmp_path / "ctc"
    Wav2Vec2ForCTC(Wav2Vec2Config(**TINY, **LAYER_NORM)).save_pretrained(ctc)
    Wav2Vec2FeatureExtractor().save_pretrained(ctc)
    bert = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(bert)
    cases = [
        (tmp_path / "missing", "does not exist"),
        ("someone/not-cached-model", "could not be downloaded"),
        (ctc, "not an audio classification model"),
        (bert, "bert model, not an audio classification model"),
    ]
    for name, message in cases:
        with pytest.raises(EncoderError, match=message) as err:
            load_hf_classifier(str(name))
        assert "\n" not in str(err.value)


# --- published classifiers: starting fine-tuning ------------------------------------------------------------


def test_architecture_of_gives_the_published_layout(ehcalabres, caplog):
    folder, _ = ehcalabres
    configured = {
        "encoder": "jonatasgrosman/wav2vec2-large-xlsr-53-english",
        "pretrained": True,
        "head": "hf",
        "pooling": "attentive",
        "projector_dim": 256,
        "use_weighted_layer_sum": False,
        "lr": 1e-4,
    }
    with caplog.at_level(logging.INFO, logger="ser.hub"):
        arguments = architecture_of(folder, configured)
    assert arguments == {
        "encoder": str(folder),
        "pretrained": False,
        "head": "hf",
        "pooling": "mean",
        "projector_dim": 256,
        "use_weighted_layer_sum": False,
    }
    assert (
        "replacing model.encoder=jonatasgrosman/wav2vec2-large-xlsr-53-english, model.pooling=attentive" in caplog.text
    )


def test_init_from_pretrained_reproduces_the_published_model(ehcalabres):
    folder, model = ehcalabres
    module = SERModule(**architecture_of(folder), labels=EMOTIONS)
    init_from_pretrained(module, str(folder))
    assert module.model.training  # still ready to train: only weights changed
    raw = clips([2400, 1500], seed=3)
    waveforms, mask = model_batch(raw)
    with torch.no_grad():
        ours = module.eval()(waveforms, mask)
    torch.testing.assert_close(ours, transformers_logits(model, folder, raw), atol=1e-5, rtol=0)


def test_init_from_pretrained_maps_labels_by_name(tmp_path):
    # another order, other spellings: each of ser's labels must get its own class's row
    theirs = ["Surprise", "neutral", "ANGER", "calm", "happiness", "fear", "sadness", "disgusted"]
    model = published_classifier(tmp_path, id2label=dict(enumerate(theirs)), seed=1)
    module = SERModule(**architecture_of(tmp_path), labels=EMOTIONS)
    init_from_pretrained(module, tmp_path)
    order = map_labels(theirs, EMOTIONS)
    assert order == [2, 3, 7, 5, 4, 1, 6, 0]

    raw = clips([2000, 1700], seed=5)
    waveforms, mask = model_batch(raw)
    with torch.no_grad():
        ours = module.eval()(waveforms, mask)
    torch.testing.assert_close(ours, transformers_logits(model, tmp_path, raw)[:, order], atol=1e-5, rtol=0)


def test_init_from_pretrained_warns_about_labels_it_lacks(tmp_path, caplog):
    theirs = ["angry", "happy", "sad", "neutral"]  # a four-class model
    model = published_classifier(tmp_path, id2label=dict(enumerate(theirs)), seed=2)
    module = SERModule(**architecture_of(tmp_path), labels=EMOTIONS)
    fresh = module.model.classifier.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="ser.hub"):
        init_from_pretrained(module, tmp_path)
    assert "calm, disgust, fearful, surprised" in caplog.text
    weight = module.model.classifier.weight.detach()
    for row, label in enumerate(EMOTIONS):
        expected = model.classifier.weight[theirs.index(label)] if label in theirs else fresh[row]
        torch.testing.assert_close(weight[row], expected.detach(), atol=0, rtol=0)


def test_init_from_pretrained_refuses_another_architecture(ehcalabres):
    folder, _ = ehcalabres
    # the encoder differs (hidden size 48 against 32)
    module = SERModule(
        encoder=None,
        pretrained=False,
        labels=EMOTIONS,
        encoder_config={"model_type": "wav2vec2", **TINY, **LAYER_NORM, "hidden_size": 48},
    )
    with pytest.raises(
        EncoderError, match=f"hidden_size=32 but the model's encoder has 48: set model.encoder={folder}"
    ) as err:
        init_from_pretrained(module, str(folder))
    assert "\n" not in str(err.value)
    # the same encoder, another head
    module = SERModule(**{**architecture_of(folder), "head": "dense_tanh"}, labels=EMOTIONS)
    with pytest.raises(EncoderError, match="needs model.head=hf and model.pooling=mean"):
        init_from_pretrained(module, str(folder))
    module = SERModule(**{**architecture_of(folder), "projector_dim": 64}, labels=EMOTIONS)
    with pytest.raises(EncoderError, match="set model.projector_dim=256"):
        init_from_pretrained(module, str(folder))


# --- ONNX -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "pooling", "norm"),
    [("hf", "mean", LAYER_NORM), ("dense_tanh", "attentive", LAYER_NORM), ("hf", "mean", GROUP_NORM)],
    ids=["hf-mean", "dense_tanh-attentive", "hf-mean-group_norm"],
)
def test_onnx_export_matches_pytorch_with_dynamic_batch_and_length(tmp_path, head, pooling, norm):
    module = make_module(norm, head=head, pooling=pooling)
    checkpoint = save_checkpoint(module, tmp_path / "m.ckpt")
    out = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "model.onnx"]  # no temporary file left behind

    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["waveforms", "attention_mask"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert metadata["labels"] == list(EMOTIONS) and metadata["sample_rate"] == RATE and metadata["normalize"] is True

    classifier = OnnxClassifier(out)
    assert (classifier.labels, classifier.sample_rate, classifier.normalize) == (list(EMOTIONS), RATE, True)
    assert classifier.uses_attention_mask is (norm is LAYER_NORM)

    module.eval()
    for seed, lengths in enumerate([[2100, 3300, 1000], [900]]):  # batch and length both unlike the traced example
        waveforms, mask = model_batch(clips(lengths, seed=seed))
        with torch.no_grad():
            expected = module(waveforms, mask)
        torch.testing.assert_close(classifier(waveforms, mask), expected, atol=1e-4, rtol=0)


def test_onnx_export_refuses_to_overwrite_and_onnx_classifier_checks_its_file(tmp_path, trained_run):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(trained_run, out)
    assert out.read_bytes() == b"mine"
    with pytest.raises(EncoderError, match="not a readable ONNX model"):
        OnnxClassifier(out)
    with pytest.raises(EncoderError, match="does not exist"):
        OnnxClassifier(tmp_path / "missing.onnx")


def test_onnx_export_to_a_path_without_the_suffix_writes_a_folder_that_predict_loads(tmp_path, trained_run):
    out = export_onnx(trained_run, tmp_path / "exported")
    assert out == tmp_path / "exported" / "model.onnx" and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no temporary folder left behind
    scorer = load_model(tmp_path / "exported")
    assert isinstance(scorer, OnnxClassifier) and scorer.path == out and scorer.labels == list(EMOTIONS)
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(trained_run, tmp_path / "exported")
    assert export_onnx(trained_run, tmp_path / "exported", overwrite=True) == out


def test_exports_get_the_mode_the_umask_gives(tmp_path, trained_run):
    previous = os.umask(0o022)
    try:
        hf = export_hf(trained_run, tmp_path / "hf")
        onnx_file = export_onnx(trained_run, tmp_path / "model.onnx")
        onnx_folder = export_onnx(trained_run, tmp_path / "onnx").parent
    finally:
        os.umask(previous)
    for folder in (hf, onnx_folder):
        assert folder.stat().st_mode & 0o777 == 0o755, folder
    for file in (hf / "model.safetensors", hf / "config.json", onnx_file, onnx_folder / "model.onnx"):
        assert file.stat().st_mode & 0o777 == 0o644, file


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_onnx_without_its_packages_names_the_extra(tmp_path, trained_run, monkeypatch, capsys, package):
    from ser.cli import main

    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(UserError, match=r"pip install -e \"\.\[onnx\]\"") as err:
        export_onnx(trained_run, tmp_path / "model.onnx")
    assert "\n" not in str(err.value) and not (tmp_path / "model.onnx").exists()
    if package == "onnxruntime":
        (tmp_path / "model.onnx").write_bytes(b"an ONNX model")
        with pytest.raises(SystemExit):
            main(["-q", "predict", str(tmp_path / "model.onnx"), str(tmp_path)])
        err = capsys.readouterr().err
        assert err.startswith("error: onnxruntime is not installed") and '".[onnx]"' in err and err.count("\n") == 1


def test_init_from_in_the_demo_takes_the_checkpoints_architecture(tmp_path, caplog):
    # The demo's model group is a tiny encoder of another shape (4 convolutions, hidden size 96)
    # than this published classifier (5 convolutions, hidden size 32), as XLSR's 7 are.
    from hydra import compose, initialize_config_dir

    from ser.config import register_configs
    from ser.train import build_module

    folder = tmp_path / "published"
    five_convolutions = {"conv_dim": [8] * 5, "conv_kernel": [10, 3, 3, 3, 2], "conv_stride": [5, 2, 2, 2, 2]}
    model = published_classifier(folder, **five_convolutions)
    register_configs()
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=demo", f"model.init_from={folder}"])
    assert list(cfg.model.encoder_config.conv_dim) != list(model.config.conv_dim)
    with caplog.at_level(logging.WARNING, logger="ser.hub"):
        module = build_module(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.name == "ser.hub" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "replacing model.projector_dim=128; ignoring model.encoder_config's model_type, hidden_size" in warnings[0]
    assert "conv_dim, conv_kernel, conv_stride" in warnings[0]
    assert "hidden_dropout" not in warnings[0]  # training settings still apply
    encoder_config = module.model.encoder.config
    assert list(encoder_config.conv_dim) == list(model.config.conv_dim)
    assert encoder_config.hidden_size == model.config.hidden_size
    assert encoder_config.hidden_dropout == cfg.model.encoder_config.hidden_dropout
    raw = clips([2400, 1500], seed=6)
    waveforms, mask = model_batch(raw)
    with torch.no_grad():
        ours = module.eval()(waveforms, mask)
    torch.testing.assert_close(ours, transformers_logits(model, folder, raw), atol=1e-5, rtol=0)

"""The feature cache: keys, atomicity, the size refusal, and logits equal to those of the frozen model on audio."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from ser import features as features_module
from ser.data.batching import ClipDataset, collate
from ser.data.features import CachedFeatures, FeatureCacheError, FrameDataset, collate_frames
from ser.data.prepare import PrepareSettings, prepare
from ser.features import extract_features, feature_key
from ser.models import SpeechClassifier, build_encoder, load_encoder_config

from .helpers import CONF_DIR, TINY_ENCODER, compose_config, tiny_run_overrides, write_noise_corpus

# wav2vec2-base's group-norm feature encoder, shrunk: such clips are encoded one length at a time
TINY_GROUP_NORM = {**TINY_ENCODER, "feat_extract_norm": "group", "do_stable_layer_norm": False}


def tiny_encoder(seed: int = 0, config: dict = TINY_ENCODER):
    torch.manual_seed(seed)
    return build_encoder(load_encoder_config(None, dict(config)), pretrained=False).eval()


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """12 clips of 1 actor, lengths 0.2 to 0.7 s, prepared."""
    root = tmp_path_factory.mktemp("features")
    write_noise_corpus(root / "ravdess", actors=(1,))
    corpus = prepare(root / "ravdess", root / "cache", progress=False)
    corpus.clips = corpus.clips[:12]  # the cache key stays the prepared corpus's
    return corpus


def test_key_follows_weights_corpus_preprocessing_and_layers(small_corpus, tmp_path):
    encoder = tiny_encoder(seed=0)
    key = feature_key(encoder, small_corpus)
    assert feature_key(tiny_encoder(seed=0), small_corpus) == key  # same weights, same key
    assert feature_key(tiny_encoder(seed=1), small_corpus) != key  # another random initialisation
    assert feature_key(encoder, small_corpus, frames="all") != key
    assert feature_key(encoder, small_corpus, frames=-1) != key  # hidden_states[-1]: before the final layer norm
    assert feature_key(encoder, small_corpus, frames=2) == feature_key(encoder, small_corpus, frames=-1)

    root = tmp_path / "other"
    write_noise_corpus(root, actors=(2,))
    other_corpus = prepare(root, tmp_path / "cache", progress=False)
    assert feature_key(encoder, other_corpus) != key
    source = small_corpus.path.parent.parent / "ravdess"
    renormalised = prepare(source, tmp_path / "cache", PrepareSettings(normalize=False), progress=False)
    assert feature_key(encoder, renormalised) != key


def test_cache_is_reused_and_invalidated(small_corpus, tmp_path, caplog):
    encoder = tiny_encoder()
    first = extract_features(encoder, small_corpus, tmp_path, progress=False)
    assert first.frames(0).dtype == np.float16 and first.frames(0).shape[1:] == (1, 32)
    assert first.means.shape == (12, 3, 32)
    assert len(first.all_frames) == first.offsets[-1]
    with caplog.at_level("INFO", logger="ser.features"):
        again = extract_features(encoder, small_corpus, tmp_path, progress=False)
    assert again.path == first.path and "reusing the feature cache" in caplog.text

    with torch.no_grad():
        encoder.encoder.layers[0].feed_forward.output_dense.weight.add_(0.01)
    changed = extract_features(encoder, small_corpus, tmp_path, progress=False)
    assert changed.path != first.path
    assert not np.allclose(changed.means, first.means)


def assert_logits_close(classifier, corpus, cached, layer):
    clips = np.arange(len(cached))
    audio = collate([ClipDataset(corpus, clips)[i] for i in clips])
    with torch.no_grad():
        on_audio = classifier(audio["waveforms"], audio["attention_mask"])
        batch = collate_frames([FrameDataset(cached, clips, layer=layer)[i] for i in clips])
        on_frames = classifier.forward_frames(batch["frames"], batch["mask"])
    assert on_frames.shape == on_audio.shape == (len(clips), 8)
    torch.testing.assert_close(on_frames, on_audio, atol=5e-3, rtol=1e-2)  # float16 frames


@pytest.mark.parametrize(
    "config, weighted, head",
    [
        (TINY_ENCODER, False, {}),
        (TINY_GROUP_NORM, False, {}),
        (TINY_ENCODER, True, {}),
        (TINY_GROUP_NORM, False, {"head": "emobox", "utterance_norm": True}),
    ],
    ids=["layer-norm", "group-norm", "weighted-layer-sum", "emobox-head"],
)
def test_head_on_cached_frames_gives_the_logits_of_the_frozen_model(small_corpus, tmp_path, config, weighted, head):
    encoder = tiny_encoder(config=config)
    classifier = SpeechClassifier(encoder, num_labels=8, use_weighted_layer_sum=weighted, **head).eval()
    if weighted:
        with torch.no_grad():
            classifier.layer_weights.copy_(torch.tensor([0.2, 0.5, 0.3]))
    frames = "all" if weighted else "output"
    cached = extract_features(classifier.encoder, small_corpus, tmp_path, frames=frames, progress=False)
    assert_logits_close(classifier, small_corpus, cached, None if weighted else "output")


def test_training_crop_is_a_window_of_frames(small_corpus, tmp_path):
    cached = extract_features(tiny_encoder(), small_corpus, tmp_path, progress=False)
    dataset = FrameDataset(cached, np.arange(12), max_seconds=0.25)
    window = cached.frames_for_samples(4000)  # 0.25 s at 16 kHz
    assert dataset.max_frames == window and dataset.lengths().max() == window
    longest = int(np.argmax(cached.frame_lengths()))
    whole = cached.frames(longest)[:, 0].astype(np.float32)
    item = dataset[(longest, 3)]["frames"].numpy()
    starts = [s for s in range(len(whole) - window + 1) if np.array_equal(whole[s : s + window], item)]
    assert len(item) == window and starts  # a contiguous window of the clip's frames
    assert np.array_equal(dataset[(longest, 3)]["frames"].numpy(), item)  # reproducible per (seed, epoch, index)
    with pytest.raises(FeatureCacheError, match="layer 0 is not in the feature cache"):
        FrameDataset(cached, np.arange(12), layer=0)


def test_a_crash_during_extraction_leaves_no_cache_that_loads(small_corpus, tmp_path, monkeypatch):
    encoder = tiny_encoder()
    calls = {"n": 0}
    real = features_module._encode

    def crash_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        yield from real(*args, **kwargs)

    monkeypatch.setattr(features_module, "_encode", crash_on_second_batch)
    monkeypatch.setattr(features_module, "_BATCH_SAMPLES", 16_000)  # several batches
    with pytest.raises(KeyboardInterrupt):
        extract_features(encoder, small_corpus, tmp_path, progress=False)
    entry = tmp_path / "features" / feature_key(encoder, small_corpus)
    assert not entry.exists()
    assert list((tmp_path / "features").iterdir()) == []  # no temporary folder left either
    with pytest.raises(FeatureCacheError, match="not a complete feature cache"):
        CachedFeatures.load(entry)

    monkeypatch.setattr(features_module, "_encode", real)
    assert calls["n"] == 2
    rebuilt = extract_features(encoder, small_corpus, tmp_path, progress=False)
    assert rebuilt.path == entry and len(rebuilt) == 12


def test_refuses_in_one_line_when_the_disk_lacks_space(small_corpus, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(FeatureCacheError) as error:
        extract_features(tiny_encoder(), small_corpus, tmp_path, frames="all", progress=False)
    message = str(error.value)
    assert "\n" not in message and "free" in message and "data.cache_dir" in message
    printed = capsys.readouterr().out
    assert "12 clips x" in printed and "3 layer(s) x 32 dims" in printed
    assert not (tmp_path / "features").exists() or not any((tmp_path / "features").iterdir())


@pytest.mark.slow
def test_frozen_benchmark_writes_its_section(tmp_path):
    from .test_benchmarks import row, run_benchmark

    section = run_benchmark("frozen.py", tmp_path / "BENCHMARKS.md")
    audio, cached = row(section, "training throughput (clips/s)")
    assert float(audio) > 0 and float(cached) > 0
    assert row(section, "speed-up of training on cached features")[0].split("x")[0].isdigit()
    assert "target under 900 s" in row(section, "full probe: extraction + probes (s)")[0]


# --- training a frozen encoder on cached features --------------------------------------------------


def test_frozen_training_reads_the_cache_reuses_it_and_leaves_a_usable_checkpoint(cfg_train, tmp_path, capsys, caplog):
    from omegaconf import open_dict

    from ser.cli import main
    from ser.module import SERModule
    from ser.train import build_module, train

    with open_dict(cfg_train):
        cfg_train.model.freeze_encoder = True
        cfg_train.data.cache_dir = str(tmp_path / "cache")
    with caplog.at_level("INFO", logger="ser.features"):
        train(cfg_train)
    assert "feature cache: " in capsys.readouterr().out  # the size, printed before extracting
    assert any(r.getMessage().startswith("feature cache written to") for r in caplog.records)
    entries = list((tmp_path / "cache" / "features").iterdir())
    assert len(entries) == 1

    caplog.clear()
    other = cfg_train.copy()
    with open_dict(other):
        other.run_dir = str(tmp_path / "other")
        other.model.pooling = "max"
        other.model.projector_dim = 32
        other.model.head_dropout = 0.2
    with caplog.at_level("INFO", logger="ser.features"):
        train(other)
    reuse = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reusing the feature cache")]
    assert reuse == [f"reusing the feature cache {entries[0]}"]
    assert list((tmp_path / "cache" / "features").iterdir()) == entries

    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    module = SERModule.load_from_checkpoint(best, map_location="cpu")
    import pytorch_lightning as pl

    pl.seed_everything(cfg_train.seed)
    initial = build_module(cfg_train).model.encoder.state_dict()
    for name, weight in module.model.encoder.state_dict().items():
        torch.testing.assert_close(weight, initial[name], rtol=0, atol=0, msg=name)  # the encoder never trained

    wav = next(Path(cfg_train.data.root).rglob("*.wav"))
    main(["-q", "predict", str(best), str(wav), "--json"])
    assert '"label"' in capsys.readouterr().out
    overrides = [f"data.root={cfg_train.data.root}", f"data.cache_dir={tmp_path / 'cache'}", "data.split=speaker"]
    main(
        [
            "-q",
            "evaluate",
            str(best),
            *overrides,
            "data.val_actors=2",
            "data.test_actors=2",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    assert (tmp_path / "ev" / "metrics.json").is_file()
    main(["-q", "export", str(best), str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "config.json").is_file()


# --- EmoBox's recipe -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml")))
def test_the_emobox_experiment_composes_with_every_encoder(model):
    cfg = compose_config(["experiment=emobox", f"model={model}"])
    assert cfg.model.freeze_encoder and cfg.model.cache_features and cfg.model.utterance_norm
    assert (cfg.model.head, cfg.model.projector_dim, cfg.model.pooling) == ("emobox", 256, "mean")
    assert not cfg.model.use_weighted_layer_sum  # EmoBox reads the last layer, whatever the model config says
    assert (cfg.data.split, cfg.data.batch_size, cfg.data.max_seconds) == ("fold", 32, None)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.trainer.max_epochs) == ("adam", 1e-4, 20)
    assert cfg.model.encoder == compose_config([f"model={model}"]).model.encoder  # the encoder stays the chosen one


@pytest.mark.slow  # seconds of in-process training; the quick loop tests its parts on their own
def test_the_emobox_experiment_trains_a_tiny_encoder_on_cached_features(corpus_dir, tmp_path):
    from ser.train import train

    run = tiny_run_overrides(corpus_dir, tmp_path / "cache", "data.batch_size=8", "trainer.max_epochs=1")
    cfg = compose_config(["experiment=emobox", "model=tiny", *run[1:], f"run_dir={tmp_path / 'run'}"])
    assert run[0] == "experiment=demo" and cfg.model.head == "emobox"

    metrics = train(cfg)

    assert 0.0 <= metrics["test/uar"] <= 1.0 and (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1


def test_utterance_norm_is_a_layer_norm_over_each_clips_real_frames():
    from ser.models.classifier import normalize_utterances

    frames = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    normalized = normalize_utterances(frames, mask)
    torch.testing.assert_close(normalized[0], torch.nn.functional.layer_norm(frames[0], (6, 4)))
    torch.testing.assert_close(normalized[1, :4], torch.nn.functional.layer_norm(frames[1, :4], (4, 4)))


def test_cache_features_follows_freeze_encoder_and_needs_it(cfg_train):
    from omegaconf import open_dict

    from ser.train import uses_cached_features

    assert not uses_cached_features(cfg_train)  # fine-tuning: no cache
    with open_dict(cfg_train):
        cfg_train.model.freeze_encoder = True
        assert uses_cached_features(cfg_train)  # the default when frozen
        cfg_train.model.cache_features = False
        assert not uses_cached_features(cfg_train)  # frozen, on the audio
        cfg_train.model.freeze_encoder = False
        cfg_train.model.cache_features = True
    with pytest.raises(FeatureCacheError, match=r"^model.cache_features=true needs model.freeze_encoder=true: "):
        uses_cached_features(cfg_train)

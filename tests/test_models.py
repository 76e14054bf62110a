"""Model parts: pooling, encoder loading, the classifier and its equivalence with transformers."""

from __future__ import annotations

import time

import huggingface_hub.constants
import pytest
import torch
from transformers import (
    AutoModelForAudioClassification,
    BertConfig,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    Wav2Vec2ForSequenceClassification,
)

from ser.models import (
    AUDIO_MODEL_TYPES,
    POOLING_TYPES,
    EncoderError,
    SpeechClassifier,
    build_encoder,
    build_pooling,
    hf_config,
    hf_state_dict,
    load_encoder_config,
    load_hf_state_dict,
    uses_group_norm,
)
from ser.models import encoder as encoder_module
from ser.models.classifier import apply_at_true_lengths
from ser.models.encoder import receptive_field, use_channels_last_features

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32, 32),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    vocab_size=12,
)
LAYER_NORM = dict(feat_extract_norm="layer", do_stable_layer_norm=True)  # XLSR-53 style
GROUP_NORM = dict(feat_extract_norm="group", do_stable_layer_norm=False)  # wav2vec2-base style
NO_RANDOMNESS = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
    mask_time_prob=0.0,
)


def tiny_config(model_type: str = "wav2vec2", **overrides):
    return load_encoder_config(None, {"model_type": model_type, **TINY, **overrides})


def tiny_classifier(
    model_type: str = "wav2vec2", num_labels: int = 8, config_overrides=None, **kwargs
) -> SpeechClassifier:
    torch.manual_seed(0)
    encoder = build_encoder(tiny_config(model_type, **(config_overrides or {})), pretrained=False)
    return SpeechClassifier(encoder, num_labels, **kwargs)


def waveforms(lengths, seed: int = 0):
    """Zero-padded noise clips (B, T) and their attention mask (B, T)."""
    gen = torch.Generator().manual_seed(seed)
    total = max(lengths)
    batch = torch.zeros(len(lengths), total)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.randn(n, generator=gen)
        mask[i, :n] = 1
    return batch, mask


# --- pooling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POOLING_TYPES)
def test_pooling_shape(name):
    pooling = build_pooling(name, 6)
    out = pooling(torch.randn(3, 5, 6), torch.ones(3, 5, dtype=torch.bool))
    assert out.shape == (3, pooling.output_dim)
    assert pooling.output_dim == (12 if name == "stats" else 6)


@pytest.mark.parametrize("name", POOLING_TYPES)
def test_pooling_ignores_padding(name):
    torch.manual_seed(0)
    pooling = build_pooling(name, 4)
    lengths = [5, 2, 7]
    frames = torch.randn(3, 7, 4, requires_grad=True)
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    garbage = frames.masked_fill(~mask[..., None], float("nan"))
    garbage = torch.where(mask[..., None] | (torch.arange(4) % 2 == 0), garbage, torch.tensor(1e6))
    out = pooling(garbage, mask)
    for i, n in enumerate(lengths):
        alone = pooling(frames[i : i + 1, :n], None)
        torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(frames.grad).all()
    assert (frames.grad[~mask] == 0).all()


def test_mean_pooling_matches_transformers_formula():
    frames, mask = torch.randn(2, 6, 3), torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]).bool()
    hidden = frames.clone()
    hidden[~mask.unsqueeze(-1).repeat(1, 1, 3)] = 0.0
    expected = hidden.sum(dim=1) / mask.sum(dim=1).view(-1, 1)
    assert torch.equal(build_pooling("mean", 3)(frames, mask), expected)


def test_unknown_pooling_lists_the_valid_names():
    with pytest.raises(ValueError, match="mean, max, attentive, stats"):
        build_pooling("median", 4)


# --- equivalence with transformers ---------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["last-layer", "weighted-sum"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "mask"])
def test_hf_head_reproduces_wav2vec2_for_sequence_classification(weighted, with_mask):
    config = Wav2Vec2Config(
        **TINY, **LAYER_NORM, num_labels=8, classifier_proj_size=16, use_weighted_layer_sum=weighted
    )
    torch.manual_seed(1)
    reference = Wav2Vec2ForSequenceClassification(config).eval()
    with torch.no_grad():  # non-trivial layer weights, so a wrong softmax or layer order would show
        if weighted:
            reference.layer_weights.copy_(torch.randn_like(reference.layer_weights))

    encoder = build_encoder(load_encoder_config(None, config.to_dict()), pretrained=False)
    ours = SpeechClassifier(encoder, 8, projector_dim=16, use_weighted_layer_sum=weighted).eval()
    load_hf_state_dict(ours, reference.state_dict())

    batch, mask = waveforms([4800, 3100, 4000])
    mask = mask if with_mask else None
    with torch.no_grad():
        expected = reference(batch, attention_mask=mask).logits
        got = ours(batch, attention_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_old_weight_norm_names_load():
    # 2021 checkpoints (the published model's era) predate torch's parametrized weight norm
    reference = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**TINY, num_labels=8, classifier_proj_size=16)).eval()
    old = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in reference.state_dict().items()
    }
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in old
    ours = tiny_classifier(projector_dim=16).eval()
    load_hf_state_dict(ours, old)
    batch, _ = waveforms([3000])
    with torch.no_grad():
        torch.testing.assert_close(ours(batch), reference(batch).logits, rtol=1e-5, atol=1e-6)


def test_export_to_transformers_round_trips():
    ours = tiny_classifier(config_overrides=LAYER_NORM, projector_dim=16, use_weighted_layer_sum=True).eval()
    with torch.no_grad():
        ours.layer_weights.copy_(torch.randn_like(ours.layer_weights))
    exported = AutoModelForAudioClassification.from_config(hf_config(ours, id2label=dict(enumerate("abcdefgh")))).eval()
    result = exported.load_state_dict(hf_state_dict(ours), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert exported.config.id2label[7] == "h"

    batch, mask = waveforms([4000, 2500])
    with torch.no_grad():
        torch.testing.assert_close(ours(batch, mask), exported(batch, attention_mask=mask).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", AUDIO_MODEL_TYPES)
def test_every_encoder_type_builds_runs_and_matches_transformers(model_type):
    ours = tiny_classifier(model_type, config_overrides=LAYER_NORM, projector_dim=16).eval()
    reference = AutoModelForAudioClassification.from_config(hf_config(ours)).eval()
    reference.load_state_dict(hf_state_dict(ours))
    batch, mask = waveforms([3200, 2000])
    with torch.no_grad():
        logits = ours(batch, mask)
        torch.testing.assert_close(logits, reference(batch, attention_mask=mask).logits, rtol=1e-5, atol=1e-6)
    assert logits.shape == (2, 8) and torch.isfinite(logits).all()


def _count_channels_last_calls(monkeypatch) -> list[int]:
    calls = []
    original = encoder_module.channels_last_features
    monkeypatch.setattr(encoder_module, "channels_last_features", lambda *args: calls.append(1) or original(*args))
    return calls


@pytest.mark.parametrize("model_type", AUDIO_MODEL_TYPES)
@pytest.mark.parametrize("norm", [LAYER_NORM, GROUP_NORM], ids=["layer", "group"])
def test_channels_last_features_are_transformers_features(model_type, norm, monkeypatch):
    encoder = build_encoder(tiny_config(model_type, conv_bias=True, **norm), pretrained=False).eval()
    batch, _ = waveforms([3200, 2000])
    calls = _count_channels_last_calls(monkeypatch)
    with torch.inference_mode():
        expected = encoder.feature_extractor(batch)
        assert use_channels_last_features(encoder) == 1
        features = encoder.feature_extractor(batch)
    assert len(calls) == 1
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_channels_last_features_leave_training_to_transformers(monkeypatch):
    encoder = build_encoder(tiny_config("wav2vec2", **LAYER_NORM), pretrained=False)
    use_channels_last_features(encoder)
    calls = _count_channels_last_calls(monkeypatch)
    batch, _ = waveforms([3200])
    assert encoder.feature_extractor(batch).requires_grad  # autograd on: transformers' forward, which back-propagates
    with torch.no_grad():
        encoder.feature_extractor(batch)  # in training mode
    assert calls == []
    with torch.no_grad():
        encoder.eval().feature_extractor(batch)
    assert calls == [1]


def test_sdpa_where_supported_eager_otherwise():
    assert build_encoder(tiny_config("wav2vec2"), pretrained=False).config._attn_implementation == "sdpa"
    assert build_encoder(tiny_config("wavlm"), pretrained=False).config._attn_implementation == "eager"


def test_hf_export_refuses_heads_transformers_lacks():
    with pytest.raises(ValueError, match="no transformers counterpart"):
        hf_state_dict(tiny_classifier(head="dense_tanh"))
    with pytest.raises(ValueError, match="no transformers counterpart"):
        hf_state_dict(tiny_classifier(pooling="stats"))


# --- loading checkpoints -------------------------------------------------------------------------


def test_ctc_checkpoint_loads_without_its_head(tmp_path):
    torch.manual_seed(0)
    ctc = Wav2Vec2ForCTC(Wav2Vec2Config(**TINY, **LAYER_NORM))
    ctc.save_pretrained(tmp_path / "ctc")

    encoder = build_encoder(load_encoder_config(str(tmp_path / "ctc")), str(tmp_path / "ctc"))
    assert type(encoder).__name__ == "Wav2Vec2Model"
    expected = ctc.wav2vec2.state_dict()
    got = encoder.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_sequence_classification_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    reference = Wav2Vec2ForSequenceClassification(
        Wav2Vec2Config(**TINY, **LAYER_NORM, num_labels=8, classifier_proj_size=16)
    )
    reference.save_pretrained(tmp_path / "cls")

    encoder = build_encoder(load_encoder_config(tmp_path / "cls"), tmp_path / "cls")
    expected = reference.wav2vec2.state_dict()
    assert all(torch.equal(encoder.state_dict()[k], expected[k]) for k in expected)
    # and the whole model, head included, maps onto the classifier
    classifier = SpeechClassifier(encoder, 8, projector_dim=16)
    load_hf_state_dict(classifier, reference.state_dict())
    assert torch.equal(classifier.classifier.weight, reference.classifier.weight)


def test_config_overrides_reach_the_loaded_model(tmp_path):
    Wav2Vec2ForCTC(Wav2Vec2Config(**TINY)).save_pretrained(tmp_path / "ctc")
    config = load_encoder_config(str(tmp_path / "ctc"), {"layerdrop": 0.3, "mask_time_prob": 0.0})
    encoder = build_encoder(config, str(tmp_path / "ctc"))
    assert encoder.config.layerdrop == 0.3 and encoder.config.mask_time_prob == 0.0


def test_full_config_dict_round_trips():
    config = Wav2Vec2Config(**TINY, **GROUP_NORM, layerdrop=0.05)
    assert load_encoder_config(None, config.to_dict()).to_dict() == config.to_dict()
    assert uses_group_norm(load_encoder_config(None, config.to_dict()))
    assert not uses_group_norm(tiny_config(**LAYER_NORM))


def test_pretrained_without_a_name_is_randomly_initialised():
    encoder = build_encoder(tiny_config(), name_or_path=None, pretrained=True)
    assert type(encoder).__name__ == "Wav2Vec2Model"


# --- errors --------------------------------------------------------------------------------------


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_text_model_is_refused(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(EncoderError) as err:
        load_encoder_config(str(tmp_path / "bert"))
    message = _one_line(err)
    assert "is a bert model, not a speech encoder" in message and str(tmp_path / "bert") in message
    with pytest.raises(EncoderError, match="bert model, not a speech encoder"):
        load_encoder_config(None, {"model_type": "bert"})


def test_missing_hub_name_fails_fast_offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; the conftest's setenv comes too late for it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(EncoderError) as err:
        load_encoder_config("nobody-ser-tests/no-such-encoder")
    assert time.monotonic() - start < 5
    message = _one_line(err)
    assert message.startswith("encoder 'nobody-ser-tests/no-such-encoder' is not in the Hugging Face cache")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_local_directory_and_missing_weights(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder_config(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="has no config.json"):
        load_encoder_config(str(tmp_path / "empty"))
    Wav2Vec2Config(**TINY).save_pretrained(tmp_path / "config-only")
    config = load_encoder_config(str(tmp_path / "config-only"))
    with pytest.raises(EncoderError) as err:
        build_encoder(config, str(tmp_path / "config-only"))
    assert "config-only" in _one_line(err)


def test_clip_shorter_than_one_frame_is_refused():
    batch, mask = waveforms([3000, 30])
    with pytest.raises(ValueError, match="clip 1 has 30 samples, fewer than the 40"):
        tiny_classifier()(batch, mask)


# --- padding never changes a clip's logits -------------------------------------------------------


@pytest.mark.parametrize(
    "head,pooling", [("hf", "mean"), ("hf", "attentive"), ("dense_tanh", "stats"), ("dense_tanh", "max")]
)
@pytest.mark.parametrize("norm", [GROUP_NORM, LAYER_NORM], ids=["group-norm", "layer-norm"])
def test_logits_do_not_depend_on_the_batch(norm, head, pooling):
    classifier = tiny_classifier(config_overrides=norm, head=head, pooling=pooling, projector_dim=16).eval()
    batch, mask = waveforms([2900, 5300])
    with torch.no_grad():
        alone = classifier(batch[:1, :2900], mask[:1, :2900])
        alone_no_mask = classifier(batch[:1, :2900])
        batched = classifier(batch, mask)
        longer_alone = classifier(batch[1:])
    torch.testing.assert_close(batched[:1], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched[:1], alone_no_mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched[1:], longer_alone, rtol=0, atol=1e-5)


def test_group_norm_encoders_really_need_clips_alone():
    # The check above is meaningful only if masking alone would fail for group norm.
    classifier = tiny_classifier(config_overrides=GROUP_NORM).eval()
    batch, mask = waveforms([2900, 5300])
    with torch.no_grad():
        alone = classifier(batch[:1, :2900])
        classifier.encode_clips_alone = False
        masked = classifier(batch, mask)
    assert (masked[0] - alone[0]).abs().max() > 1e-4


def test_bool_and_int_masks_agree():
    classifier = tiny_classifier(config_overrides=LAYER_NORM).eval()
    batch, mask = waveforms([2900, 5300])
    with torch.no_grad():
        assert torch.equal(classifier(batch, mask), classifier(batch, mask.bool()))


# --- training controls ---------------------------------------------------------------------------


def test_freezing_and_parameter_groups():
    classifier = tiny_classifier(use_weighted_layer_sum=True)
    feature_encoder = {id(p) for p in classifier.encoder.feature_extractor.parameters()}
    rest_of_encoder = [p for p in classifier.encoder.parameters() if id(p) not in feature_encoder]

    classifier.freeze_feature_encoder()
    assert not any(p.requires_grad for p in classifier.encoder.feature_extractor.parameters())
    assert all(p.requires_grad for p in rest_of_encoder)

    classifier.set_encoder_trainable(False)
    assert not any(p.requires_grad for p in classifier.encoder.parameters())
    assert all(p.requires_grad for p in classifier.head_parameters())

    classifier.set_encoder_trainable(True)
    assert all(p.requires_grad for p in rest_of_encoder)
    assert not any(p.requires_grad for p in classifier.encoder.feature_extractor.parameters())

    classifier.set_encoder_trainable(True, keep_feature_encoder_frozen=False)
    assert all(p.requires_grad for p in classifier.encoder.parameters())

    encoder_ids = {id(p) for p in classifier.encoder_parameters()}
    head_ids = {id(p) for p in classifier.head_parameters()}
    assert not encoder_ids & head_ids
    assert encoder_ids | head_ids == {id(p) for p in classifier.parameters()}
    assert id(classifier.layer_weights) in head_ids


def test_state_dict_names_are_transformers_names():
    keys = set(tiny_classifier(use_weighted_layer_sum=True).state_dict())
    assert {"layer_weights", "projector.weight", "projector.bias", "classifier.weight", "classifier.bias"} <= keys
    assert all(
        k.startswith("encoder.")
        for k in keys - {"layer_weights", "projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}
    )
    keys = set(tiny_classifier(head="dense_tanh").state_dict())
    assert {"dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"} <= keys


@pytest.mark.parametrize("norm", [GROUP_NORM, LAYER_NORM], ids=["group-norm", "layer-norm"])
def test_gradient_checkpointing_gives_the_same_gradients(norm):
    def gradients(checkpointing: bool):
        torch.manual_seed(0)
        config = tiny_config(**norm, **NO_RANDOMNESS)
        encoder = build_encoder(config, pretrained=False, gradient_checkpointing=checkpointing)
        if hasattr(type(encoder), "is_activation_checkpointing"):  # transformers 5 renamed it
            assert encoder.is_activation_checkpointing == checkpointing
        else:
            assert encoder.is_gradient_checkpointing == checkpointing
        classifier = SpeechClassifier(encoder, 4, projector_dim=16, use_weighted_layer_sum=True).train()
        classifier.freeze_feature_encoder()
        batch, mask = waveforms([2900, 5300])
        torch.nn.functional.cross_entropy(classifier(batch, mask), torch.tensor([1, 3])).backward()
        return {n: p.grad for n, p in classifier.named_parameters() if p.requires_grad}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        if grad is None:  # unused: transformers' hidden_states skip the stable-layer-norm model's final norm
            assert checkpointed[name] is None, name
        else:
            torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6)
    assert checkpointed["encoder.encoder.layers.0.attention.q_proj.weight"].abs().sum() > 0


@pytest.mark.parametrize("kernels_strides", [((10, 3, 3), (5, 2, 2)), ((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))])
def test_receptive_field_is_the_shortest_clip_with_a_frame(kernels_strides):
    kernels, strides = kernels_strides
    config = tiny_config(conv_dim=(8,) * len(kernels), conv_kernel=kernels, conv_stride=strides)
    encoder = build_encoder(config, pretrained=False)
    need = receptive_field(config)
    frames = encoder._get_feat_extract_output_lengths(torch.tensor([need - 1, need]))
    assert frames.tolist() == [0, 1]
    assert receptive_field(None) == 1


def test_apply_at_true_lengths_gives_each_clip_alone():
    waveforms = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0], [6.0, 0.0, 0.0], [7.0, 8.0, 0.0]])
    mask = waveforms != 0
    calls = []

    def length_and_sum(clips):
        calls.append(tuple(clips.shape))
        return torch.stack([torch.full((clips.shape[0],), float(clips.shape[1])), clips.sum(dim=1)], dim=1)

    result = apply_at_true_lengths(length_and_sum, waveforms, mask)
    assert result.tolist() == [[3, 6], [2, 9], [1, 6], [2, 15]]
    assert sorted(calls) == [(1, 1), (1, 3), (2, 2)]  # one call per length
    calls.clear()
    assert apply_at_true_lengths(length_and_sum, waveforms[:1], None).tolist() == [[3, 6]] and calls == [(1, 3)]

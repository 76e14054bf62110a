"""Published Hugging Face audio-classification models: score with them, or start fine-tuning from them.

    load_hf_classifier(name_or_path) -> HFClassifier      score as transformers does (``ser predict``)
    init_from_pretrained(module, name_or_path)            encoder and head weights into a SERModule

Both take a Hub name (e.g. ``ehcalabres/wav2vec2-lg-xlsr-en-speech-emotion-recognition``, a
standard ``Wav2Vec2ForSequenceClassification``) or a directory written by ``save_pretrained``.
Failures are one-line :class:`~ser.models.encoder.EncoderError`\\ s.

Starting a run from a published classifier (``model.init_from``) needs the module's architecture to
be the checkpoint's: :func:`architecture_of` gives the ``SERModule`` arguments that make it so, and
``train.build_module`` applies them before building the module::

    init_from = model.pop("init_from")
    if init_from:
        model.update(architecture_of(init_from, model))   # the checkpoint's encoder, head, pooling and sizes
    module = SERModule(**model, ...)
    if init_from:
        init_from_pretrained(module, init_from)    # every weight, labels mapped by name
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES

from .errors import first_line
from .models.classifier import SpeechClassifier, apply_at_true_lengths, check_batch, load_hf_state_dict
from .models.encoder import (
    AUDIO_MODEL_TYPES,
    EncoderError,
    is_local_path,
    not_loadable,
    receptive_field,
    use_channels_last_features,
)
from .scoring import evaluating, module_logits

log = logging.getLogger(__name__)

# Label names as other emotion corpora and models spell them, to the spelling of ser's labels
# (RAVDESS's, in ser.data.ravdess.EMOTIONS). Keys and values are already canonical (see _canonical).
LABEL_ALIASES: dict[str, str] = {
    "anger": "angry",
    "ang": "angry",
    "calmness": "calm",
    "disgusted": "disgust",
    "dis": "disgust",
    "fear": "fearful",
    "afraid": "fearful",
    "fea": "fearful",
    "happiness": "happy",
    "hap": "happy",
    "neu": "neutral",
    "sadness": "sad",
    "surprise": "surprised",
    "sur": "surprised",
}

# Config fields that decide the encoder's layers: two configs that agree on these hold the same
# weights under the same names. (Dropouts, SpecAugment masking and layerdrop are training settings.)
ARCHITECTURE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "feat_extract_activation",
    "do_stable_layer_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "position_embeddings_type",
    "conv_depthwise_kernel_size",
    "num_buckets",
    "max_bucket_distance",
    "add_adapter",
    "num_adapter_layers",
    "adapter_kernel_size",
    "adapter_stride",
    "output_hidden_size",
)


# --- loading ---------------------------------------------------------------------------------------


def _classifier_config(name_or_path: str) -> PretrainedConfig:
    """The config of an audio-classification checkpoint of the wav2vec2 family, or a one-line EncoderError."""
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:  # ValueError: a malformed name, or a config.json transformers cannot read
        raise not_loadable(name_or_path, err) from None
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES:
        raise EncoderError(f"'{name_or_path}' is a {model_type} model, not an audio classification model")
    if model_type not in AUDIO_MODEL_TYPES:
        # AST and Whisper classify spectrograms; ser feeds waveforms and builds only this family's head
        raise EncoderError(
            f"'{name_or_path}' is a {model_type} audio classifier: ser handles waveform classifiers of the "
            "wav2vec2 family (wav2vec2, HuBERT, WavLM, data2vec-audio)"
        )
    return config


def _load_classification_model(name_or_path: str, config: PretrainedConfig) -> nn.Module:
    """`<Model>ForSequenceClassification` with its trained head, in eval mode, float32."""
    try:
        model, info = AutoModelForAudioClassification.from_pretrained(
            name_or_path, config=config, dtype=torch.float32, output_loading_info=True
        )
    except OSError as err:  # config cached but weights not, or no weights file in the directory
        raise not_loadable(name_or_path, err) from None
    except RuntimeError as err:  # weights that do not fit the config
        raise EncoderError(f"the weights of '{name_or_path}' do not fit its config: {first_line(err)}") from None
    # masked_spec_embed exists only when masking is on, so a checkpoint saved without it may lack it
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("masked_spec_embed"))
    if missing:
        architectures = ", ".join(getattr(config, "architectures", None) or []) or "a checkpoint without architectures"
        head = [k for k in missing if k.split(".")[0] in ("classifier", "projector")]
        if head:
            raise EncoderError(
                f"'{name_or_path}' has no classification head ({architectures}): "
                "it is not an audio classification model"
            )
        raise EncoderError(
            f"'{name_or_path}' lacks {len(missing)} weights (e.g. {missing[0]}): "
            f"it is not a complete {config.model_type} classifier"
        )
    return model.float().eval()


def checkpoint_labels(config: PretrainedConfig) -> list[str]:
    """The checkpoint's label names, ordered by class index (`config.id2label`)."""
    id2label = {int(i): str(label) for i, label in (getattr(config, "id2label", None) or {}).items()}
    num_labels = getattr(config, "num_labels", len(id2label))
    return [id2label.get(i, f"LABEL_{i}") for i in range(num_labels)]


# --- scoring with a published classifier -------------------------------------------------------------


class HFClassifier(nn.Module):
    """A transformers audio-classification model as ser scores with it: a :class:`ser.scoring.Scorer`.

    Attributes: ``labels`` (from ``config.id2label``, in class order), ``sample_rate``, ``normalize``
    (the feature extractor's ``do_normalize``), ``uses_attention_mask`` (its ``return_attention_mask``),
    ``trim_db`` (None: transformers trims nothing), ``min_samples`` (the CNN's receptive field),
    ``name``, ``model`` (the transformers model), ``feature_extractor``.

    ``forward`` takes what the feature extractor would hand the model: clips at ``sample_rate``,
    normalised per clip if ``normalize`` (as :func:`ser.data.audio.to_model_input` does), zero padded
    after each clip, with ``attention_mask`` (B, T) True/1 on real samples. It then scores exactly as
    transformers does: the mask goes to the model only when the feature extractor returns one.

    Padding: a model whose feature extractor returns no mask (the group-norm ones, wav2vec2-base
    style) sees zero padding as signal, so a padded clip scores differently from the clip alone.
    Given a mask, such clips are scored at their true lengths, clips of equal length together (what
    ``transformers.pipeline``, one clip at a time, gives); callers that want one pass per batch
    should batch clips of equal length.

    Scored on a CPU, the CNN feature encoder runs channels-last
    (:func:`ser.models.encoder.use_channels_last_features`): transformers' results to float rounding.
    """

    def __init__(self, model: nn.Module, feature_extractor, name_or_path: str | None = None):
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.name_or_path = name_or_path
        self.labels = checkpoint_labels(model.config)
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.normalize = bool(getattr(feature_extractor, "do_normalize", False))
        self.uses_attention_mask = bool(getattr(feature_extractor, "return_attention_mask", False))
        self.trim_db = None
        self.min_samples = receptive_field(model.config)
        self.name = str(name_or_path or "model").rstrip("/").split("/")[-1]
        use_channels_last_features(model)  # the same scores, computed faster on a CPU

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def forward(self, waveforms: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) float32 for waveforms (B, T) float32, attention_mask (B, T) bool/int or None."""
        check_batch(waveforms, attention_mask)
        waveforms = waveforms.float()
        if self.uses_attention_mask:
            # transformers' feature extractor hands over an integer mask; the model wants it that way
            mask = None if attention_mask is None else attention_mask.long()
            return self.model(input_values=waveforms, attention_mask=mask).logits.float()
        return apply_at_true_lengths(lambda x: self.model(input_values=x).logits.float(), waveforms, attention_mask)

    def logits(self, waveforms: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) float32 on the CPU, the inputs moved to the model's device; see :class:`ser.scoring.Scorer`."""
        return module_logits(self, waveforms, attention_mask)

    def inference(self):
        """Eval mode and no autograd for the duration."""
        return evaluating(self)

    def extra_repr(self) -> str:
        return (
            f"name_or_path={self.name_or_path!r}, labels={self.labels}, sample_rate={self.sample_rate}, "
            f"normalize={self.normalize}"
        )


def _feature_extractor(name_or_path: str):
    try:
        return AutoFeatureExtractor.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        if is_local_path(name_or_path) and Path(name_or_path).expanduser().is_dir():
            raise EncoderError(
                f"'{name_or_path}' has no preprocessor_config.json: save the model's feature extractor there too "
                "(Wav2Vec2FeatureExtractor.save_pretrained)"
            ) from None
        raise not_loadable(name_or_path, err, what="feature extractor of") from None


def load_hf_classifier(name_or_path: str | Path) -> HFClassifier:
    """A published audio-classification model (Hub name or local directory) as an :class:`HFClassifier`.

    Loads ``AutoModelForAudioClassification`` and ``AutoFeatureExtractor`` from `name_or_path`, in
    eval mode, on the CPU. Raises a one-line EncoderError when it is missing, cannot be downloaded,
    or is no audio classification model of the wav2vec2 family.
    """
    name_or_path = str(name_or_path)
    config = _classifier_config(name_or_path)
    feature_extractor = _feature_extractor(name_or_path)
    if getattr(feature_extractor, "feature_size", 1) != 1:
        raise EncoderError(
            f"the feature extractor of '{name_or_path}' does not take raw waveforms: it is no wav2vec2-style classifier"
        )
    model = _load_classification_model(name_or_path, config)
    return HFClassifier(model, feature_extractor, name_or_path)


# --- starting fine-tuning from a published classifier --------------------------------------------------


def _canonical(label: str) -> str:
    name = re.sub(r"[\s_\-]+", "", str(label).strip().lower())
    return LABEL_ALIASES.get(name, name)


def map_labels(source: Sequence[str], target: Sequence[str]) -> list[int | None]:
    """For each target label, the index of the source label with the same name (or None).

    Names match case-insensitively and through LABEL_ALIASES ("Fear" -> "fearful", "surprise" -> "surprised").
    """
    index: dict[str, int] = {}
    for i, label in enumerate(source):
        index.setdefault(_canonical(label), i)  # a duplicated name: the first one wins
    return [index.get(_canonical(label)) for label in target]


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _training_setting(key: str) -> bool:
    """Whether an encoder config field only shapes training (dropouts, masking), not the layers."""
    return "dropout" in key or key.startswith("mask_") or key in ("layerdrop", "apply_spec_augment")


def architecture_of(name_or_path: str | Path, current: Mapping | None = None) -> dict:
    """``SERModule`` arguments that give the architecture of a published classifier.

    ``encoder`` = `name_or_path` (its config), ``pretrained=False`` (:func:`init_from_pretrained`
    loads every weight afterwards, so nothing is read twice), ``head="hf"``, ``pooling="mean"``, and
    the checkpoint's ``projector_dim`` (``classifier_proj_size``) and ``use_weighted_layer_sum``.

    With `current` (the model arguments as configured) its ``encoder_config`` is kept for the
    training settings only (dropouts, SpecAugment masking, layerdrop): fields that give the layers'
    shape (``conv_dim``, ``hidden_size``, ...) would contradict the checkpoint's. What the checkpoint
    overrides is named in one warning line.
    """
    name_or_path = str(name_or_path)
    config = _classifier_config(name_or_path)
    arguments = {
        "encoder": name_or_path,
        "pretrained": False,
        "head": "hf",
        "pooling": "mean",
        "projector_dim": int(config.classifier_proj_size),
        "use_weighted_layer_sum": bool(getattr(config, "use_weighted_layer_sum", False)),
    }
    if current is None:
        return arguments
    replaced = [
        f"model.{key}={current[key]}"
        for key, value in arguments.items()
        if key != "pretrained" and current.get(key) is not None and current[key] != value
    ]
    encoder_config = current.get("encoder_config")
    ignored = []
    if encoder_config is not None:
        arguments["encoder_config"] = {k: v for k, v in encoder_config.items() if _training_setting(k)}
        ignored = [k for k in encoder_config if not _training_setting(k)]
    changes = ([f"replacing {', '.join(replaced)}"] if replaced else []) + (
        [f"ignoring model.encoder_config's {', '.join(ignored)}"] if ignored else []
    )
    if changes:
        log.warning("model.init_from=%s decides the architecture; %s", name_or_path, "; ".join(changes))
    return arguments


def _check_architecture(classifier: SpeechClassifier, config: PretrainedConfig, name: str) -> None:
    fix = f"set model.encoder={name} so the architectures agree"
    if classifier.head != "hf" or classifier.pooling_name != "mean":
        raise EncoderError(
            f"model.init_from '{name}' needs model.head=hf and model.pooling=mean (its layout), "
            f"not head {classifier.head!r} with {classifier.pooling_name!r} pooling"
        )
    ours = classifier.encoder.config
    for field in ARCHITECTURE_FIELDS:
        theirs_value, our_value = _plain(getattr(config, field, None)), _plain(getattr(ours, field, None))
        if theirs_value != our_value:
            raise EncoderError(
                f"model.init_from '{name}' has {field}={theirs_value} but the model's encoder has {our_value}: {fix} "
                "(and drop model.encoder_config fields that change its layers)"
            )
    if classifier.projector.out_features != config.classifier_proj_size:
        raise EncoderError(
            f"model.init_from '{name}' has a projector of {config.classifier_proj_size} but the model's is "
            f"{classifier.projector.out_features}: set model.projector_dim={config.classifier_proj_size}"
        )
    weighted = bool(getattr(config, "use_weighted_layer_sum", False))
    if classifier.use_weighted_layer_sum != weighted:
        raise EncoderError(
            f"model.init_from '{name}' has use_weighted_layer_sum={weighted}: "
            f"set model.use_weighted_layer_sum={str(weighted).lower()}"
        )


def _check_inputs(module, name: str) -> None:
    # Fine-tuning on differently prepared audio would start from a model that sees unfamiliar input.
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(name)
    except (OSError, ValueError):
        log.warning("'%s' has no feature extractor config: cannot check its sample rate and normalisation", name)
        return
    rate = getattr(feature_extractor, "sampling_rate", None)
    normalize = getattr(feature_extractor, "do_normalize", None)
    if rate is not None and int(rate) != int(module.hparams.sample_rate):
        log.warning(
            "'%s' was trained at %s Hz but the data is at %s Hz: set data.sample_rate=%s",
            name,
            rate,
            module.hparams.sample_rate,
            rate,
        )
    if normalize is not None and bool(normalize) != bool(module.hparams.normalize):
        log.warning(
            "'%s' expects do_normalize=%s but data.normalize=%s: set data.normalize=%s",
            name,
            normalize,
            module.hparams.normalize,
            str(bool(normalize)).lower(),
        )


def init_from_pretrained(module, name_or_path: str | Path) -> None:
    """Start `module` (a SERModule) from a published classifier, head included, in place.

    Loads the checkpoint's ``<Model>ForSequenceClassification`` weights (encoder, ``layer_weights``,
    ``projector``, ``classifier``) into ``module.model`` via :func:`load_hf_state_dict`. The rows of
    ``classifier.weight`` (C, P) and ``classifier.bias`` (C,) are taken by label NAME, so the
    module's label order (``module.hparams.labels``) is kept whatever the checkpoint's order; names
    match case-insensitively and through LABEL_ALIASES. Labels the checkpoint lacks keep their fresh
    initialisation and are listed in a warning.

    The module must have the checkpoint's architecture: build it with ``**architecture_of(name)``
    (what ``train.build_module`` does with ``model.init_from``), or at least with
    ``model.encoder=name``. A mismatch is a one-line EncoderError saying what to set.
    """
    name = str(name_or_path)
    classifier: SpeechClassifier = module.model
    config = _classifier_config(name)
    _check_architecture(classifier, config, name)
    _check_inputs(module, name)
    state_dict = _load_classification_model(name, config).state_dict()

    labels = [str(label) for label in module.hparams.labels]
    source = checkpoint_labels(config)
    mapping = map_labels(source, labels)
    weight = classifier.classifier.weight.detach().clone()  # the fresh init, kept for unmatched labels
    bias = classifier.classifier.bias.detach().clone()
    their_weight, their_bias = state_dict["classifier.weight"], state_dict["classifier.bias"]
    for row, index in enumerate(mapping):
        if index is not None:
            weight[row] = their_weight[index]
            bias[row] = their_bias[index]
    state_dict["classifier.weight"], state_dict["classifier.bias"] = weight, bias

    result = load_hf_state_dict(classifier, state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("masked_spec_embed")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("masked_spec_embed")]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise EncoderError(
            f"'{name}' does not fit the model "
            f"({len(missing)} weights missing, {len(unexpected)} unexpected, e.g. {key}): "
            f"set model.encoder={name} so the architectures agree"
        )

    unmatched = [label for label, index in zip(labels, mapping) if index is None]
    unused = sorted(set(range(len(source))) - {i for i in mapping if i is not None})
    if unmatched:
        log.warning(
            "model.init_from '%s' has no class for %s (its labels: %s): "
            "those rows of the classifier start from a fresh initialisation",
            name,
            ", ".join(unmatched),
            ", ".join(source),
        )
    if unused:
        log.info("model.init_from '%s': classes not used here: %s", name, ", ".join(source[i] for i in unused))
    log.info(
        "initialised from '%s': encoder and head, %d of %d labels mapped by name",
        name,
        len(labels) - len(unmatched),
        len(labels),
    )

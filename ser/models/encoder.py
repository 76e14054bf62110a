"""Loading a self-supervised speech encoder (wav2vec 2.0 family) as a bare transformers base model.

Checkpoints saved with a task head (`Wav2Vec2ForCTC`, `...ForSequenceClassification`) load too:
their head weights are dropped, which transformers reports as UNEXPECTED keys in its load report.
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # transformers is imported where a model or config is built: it takes seconds to import
    from transformers import PretrainedConfig, PreTrainedModel

from ..errors import UserError, first_line

log = logging.getLogger(__name__)

# Base models that take a raw 16 kHz waveform and share wav2vec 2.0's interface: a CNN
# `feature_extractor`, `_get_feature_vector_attention_mask`, and a `<Model>ForSequenceClassification`
# with the same projector + classifier head.
AUDIO_MODEL_TYPES = (
    "wav2vec2",
    "hubert",
    "wavlm",
    "data2vec-audio",
    "wav2vec2-conformer",
    "unispeech",
    "unispeech-sat",
)

_USE_INSTEAD = "use a wav2vec2, HuBERT, WavLM or data2vec-audio checkpoint"


class EncoderError(UserError):
    """An encoder or a published model that cannot be loaded; the message is one line saying why and what to do."""


def is_local_path(name: str) -> bool:
    """Whether ``name`` means a local path rather than a Hugging Face Hub name (``owner/model``)."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or Path(name).expanduser().exists()


def not_loadable(name: str, error: BaseException, what: str = "model", setting: str | None = None) -> EncoderError:
    """The one-line error for a Hub name or local directory ``name`` that transformers could not load.

    ``what`` names the thing ("encoder", "model", "feature extractor of"); ``setting`` is the option
    to change (e.g. ``model.encoder``), or None for a function argument.
    """
    fix = f"set {setting} to" if setting else "give"
    path = Path(name).expanduser()
    if is_local_path(name):
        if not path.exists():
            return EncoderError(
                f"{what} directory '{name}' does not exist: {fix} a Hugging Face model name or an existing directory"
            )
        if path.is_dir() and not (path / "config.json").is_file():
            return EncoderError(
                f"{what} directory '{name}' has no config.json: {fix} a directory written by save_pretrained"
            )
        return EncoderError(f"could not load {what} '{name}': {first_line(error)}")
    return EncoderError(
        f"{what} '{name}' is not in the Hugging Face cache and could not be downloaded: "
        f"connect once to download it, or {fix} a local directory written by save_pretrained"
    )


def receptive_field(config: PretrainedConfig | None) -> int:
    """Samples the CNN feature encoder of ``config`` needs for one frame; 1 when it has no CNN (or no config)."""
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if not kernels or not strides:
        return 1
    need = 1
    for kernel, stride in zip(reversed(list(kernels)), reversed(list(strides))):
        need = (need - 1) * stride + kernel
    return need


def _check_audio(config: PretrainedConfig, name_or_path: str | None) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type in AUDIO_MODEL_TYPES:
        return
    what = f"'{name_or_path}'" if name_or_path else "the encoder config"
    raise EncoderError(f"{what} is a {model_type} model, not a speech encoder: {_USE_INSTEAD}")


def _plain(overrides: Mapping | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    try:  # Hydra hands over DictConfig; transformers wants plain lists and dicts
        from omegaconf import OmegaConf

        if OmegaConf.is_config(overrides):
            return OmegaConf.to_container(overrides, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(overrides)


def load_encoder_config(name_or_path: str | None, overrides: Mapping | None = None) -> PretrainedConfig:
    """The encoder's config: read from a Hub name or local directory, or built from `overrides` alone.

    With `name_or_path`, `overrides` replace fields of the saved config (e.g. `layerdrop`,
    `mask_time_prob`). Without it, `overrides` must hold `model_type` and may hold every other field,
    as `config.to_dict()` gives them.
    """
    from transformers import AutoConfig

    overrides = _plain(overrides)
    if name_or_path is None:
        model_type = overrides.pop("model_type", None)
        if model_type is None:
            raise EncoderError(
                "no encoder given: set model.encoder to a checkpoint, or give model.encoder_config with a model_type"
            )
        if model_type not in AUDIO_MODEL_TYPES:
            raise EncoderError(f"the encoder config is a {model_type} model, not a speech encoder: {_USE_INSTEAD}")
        try:
            return AutoConfig.for_model(model_type, **overrides)
        except (TypeError, ValueError) as err:
            raise EncoderError(f"invalid encoder config for {model_type}: {first_line(err)}") from None

    name_or_path = str(name_or_path)
    wanted_type = overrides.pop("model_type", None)
    try:
        config = AutoConfig.from_pretrained(name_or_path, **overrides)
    except (OSError, ValueError) as err:  # ValueError: a malformed name, or a config.json transformers cannot read
        raise not_loadable(name_or_path, err, what="encoder", setting="model.encoder") from None
    _check_audio(config, name_or_path)
    if wanted_type is not None and wanted_type != config.model_type:
        raise EncoderError(
            f"'{name_or_path}' is a {config.model_type} model but the overrides say {wanted_type}: "
            "drop model_type from model.encoder_config"
        )
    return config


def uses_group_norm(config: PretrainedConfig) -> bool:
    """Whether the CNN feature encoder normalises over time (wav2vec2-base style).

    Such encoders see zero padding as signal: a padded clip encodes differently from the clip alone,
    and an attention mask cannot fix that, so these clips must be encoded at their true length.
    """
    return getattr(config, "feat_extract_norm", None) == "group"


def _attention_implementation(config: PretrainedConfig, requested: str | None) -> str | None:
    if requested != "sdpa":
        return requested
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_class = MODEL_MAPPING.get(type(config), None)
    if model_class is not None and not getattr(model_class, "_supports_sdpa", False):
        log.info("%s has no SDPA attention; using eager attention", model_class.__name__)
        return "eager"
    return requested


def build_encoder(
    config: PretrainedConfig,
    name_or_path: str | None = None,
    pretrained: bool = True,
    attn_implementation: str | None = "sdpa",
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """The base model (e.g. `Wav2Vec2Model`) for `config`, in float32.

    Weights come from `name_or_path` when `pretrained` and a name is given; otherwise the encoder is
    randomly initialised. Every field of `config` (layerdrop, dropouts, SpecAugment masking) is what
    the model uses, also when the checkpoint was saved with other values. `config` is not modified.
    """
    from transformers import AutoModel

    _check_audio(config, name_or_path)
    config = copy.deepcopy(config)  # transformers writes the attention implementation into it
    attn = _attention_implementation(config, attn_implementation)
    kwargs = {} if attn is None else {"attn_implementation": attn}

    if pretrained and name_or_path:
        name_or_path = str(name_or_path)
        try:
            model, info = AutoModel.from_pretrained(name_or_path, config=config, output_loading_info=True, **kwargs)
        except OSError as err:  # config cached but weights not, or no weights file in the directory
            raise not_loadable(name_or_path, err, what="encoder", setting="model.encoder") from None
        except RuntimeError as err:  # size mismatches between the checkpoint and the (overridden) config
            raise EncoderError(
                f"the weights of '{name_or_path}' do not fit the encoder config ({first_line(err)}): "
                "drop model.encoder_config fields that change layer sizes"
            ) from None
        # masked_spec_embed exists only when masking is on, so a checkpoint saved without it may lack it
        missing = sorted(k for k in info["missing_keys"] if k != "masked_spec_embed")
        if missing:
            raise EncoderError(
                f"'{name_or_path}' lacks {len(missing)} encoder weights (e.g. {missing[0]}): "
                f"it is not a {config.model_type} checkpoint, or set model.pretrained=false to train from scratch"
            )
    else:
        model = AutoModel.from_config(config, **kwargs)

    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()  # mixed precision wants float32 master weights, whatever the file held
    if gradient_checkpointing:
        _enable_checkpointing(model)
    return model


def _enable_checkpointing(model: PreTrainedModel) -> None:
    # Non-reentrant checkpointing back-propagates even when a layer's input needs no gradient
    # (a frozen feature encoder), which the reentrant kind silently would not.
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# --- the CNN feature encoder, channels-last, for inference on a CPU ---------------------------------

# transformers' convolution layers of the wav2vec 2.0 family (`<Model><kind>`): a `conv` (Conv1d), an
# optional `layer_norm` and an `activation`, applied in that order.
_CONV_LAYER_KINDS = ("NoLayerNormConvLayer", "LayerNormConvLayer", "GroupNormConvLayer", "AudioConvLayer")


def _is_plain_conv_layer(layer: nn.Module) -> bool:
    conv, norm = getattr(layer, "conv", None), getattr(layer, "layer_norm", None)
    return (
        type(layer).__name__.endswith(_CONV_LAYER_KINDS)
        and isinstance(conv, nn.Conv1d)
        and conv.padding == (0,)
        and conv.dilation == (1,)
        and conv.groups == 1
        and (norm is None or isinstance(norm, (nn.LayerNorm, nn.GroupNorm)))
    )


def channels_last_features(conv_layers: nn.ModuleList, input_values: Tensor) -> Tensor:
    """What transformers' CNN feature encoder computes for input_values (B, T): (B, C, T') float32.

    Each convolution runs as a one-row conv2d on channels-last activations, the (B, T', C) layout that
    oneDNN computes in without reordering, and each layer norm then normalises contiguous rows.
    transformers' layers run on (B, C, T') and transpose around every layer norm, which copies the
    largest activations twice per layer. The result is a (B, C, T') view of (B, T', C) memory: the
    encoder transposes it to (B, T', C) next, which is then free.
    """
    batch, samples = input_values.shape
    # (B, 1, 1, T) with channels-last strides, so that the first convolution writes channels-last too
    hidden = input_values.contiguous().as_strided((batch, 1, 1, samples), (samples, 1, samples, 1))
    for layer in conv_layers:
        conv, norm = layer.conv, getattr(layer, "layer_norm", None)
        hidden = F.conv2d(hidden, conv.weight.unsqueeze(2), conv.bias, stride=(1, conv.stride[0]))
        hidden = hidden.contiguous(memory_format=torch.channels_last)  # a no-op where oneDNN kept the layout
        if isinstance(norm, nn.LayerNorm):
            rows = F.layer_norm(hidden.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            hidden = layer.activation(rows).permute(0, 3, 1, 2)
        elif isinstance(norm, nn.GroupNorm):
            # over time, in transformers' layout: torch's channels-last group norm sums in another order,
            # which moves the results of long clips by more than float rounding
            hidden = layer.activation(norm(hidden.contiguous())).contiguous(memory_format=torch.channels_last)
        else:
            hidden = layer.activation(hidden)
    return hidden[:, :, 0, :]


def _feature_encoder_forward(self: nn.Module, input_values: Tensor) -> Tensor:
    if torch.is_grad_enabled() or self.training or input_values.device.type != "cpu" or input_values.dim() != 2:
        return type(self).forward(self, input_values)
    return channels_last_features(self.conv_layers, input_values)


def use_channels_last_features(model: nn.Module) -> int:
    """Let every transformers CNN feature encoder in `model` compute channels-last when it runs on a
    CPU without autograd (prediction, evaluation); training and GPUs keep transformers' own code.

    The results are transformers' to float rounding; see :func:`channels_last_features`. An encoder
    with layers of another kind is left as it is. Returns the number of encoders switched over.
    """
    switched = 0
    for module in model.modules():
        layers = getattr(module, "conv_layers", None)
        if (
            isinstance(layers, nn.ModuleList)
            and len(layers) > 0
            and all(_is_plain_conv_layer(layer) for layer in layers)
            and type(module).__name__.endswith("FeatureEncoder")
        ):
            # bound to the module, so that a deep copy of the model calls its own copy's layers
            module.forward = types.MethodType(_feature_encoder_forward, module)
            switched += 1
    return switched

"""Model parts: a speech encoder from transformers, masked pooling, and the classification head."""

from .classifier import (
    HEAD_TYPES,
    SpeechClassifier,
    apply_at_true_lengths,
    hf_config,
    hf_state_dict,
    load_hf_state_dict,
)
from .encoder import (
    AUDIO_MODEL_TYPES,
    EncoderError,
    build_encoder,
    load_encoder_config,
    receptive_field,
    uses_group_norm,
)
from .pooling import POOLING_TYPES, AttentivePooling, MaxPooling, MeanPooling, Pooling, StatisticsPooling, build_pooling

__all__ = [
    "AUDIO_MODEL_TYPES",
    "HEAD_TYPES",
    "POOLING_TYPES",
    "AttentivePooling",
    "EncoderError",
    "MaxPooling",
    "MeanPooling",
    "Pooling",
    "SpeechClassifier",
    "StatisticsPooling",
    "apply_at_true_lengths",
    "build_encoder",
    "build_pooling",
    "hf_config",
    "hf_state_dict",
    "load_encoder_config",
    "load_hf_state_dict",
    "receptive_field",
    "uses_group_norm",
]

"""A speech encoder with a pooled classification head: waveforms (B, T) -> logits (B, num_labels).

State-dict layout, chosen so that a transformers `<Model>ForSequenceClassification` (the published
ehcalabres model among them) maps onto it by renaming one prefix:

    encoder.*          <->  <base_model_prefix>.*   (wav2vec2, hubert, wavlm, data2vec_audio, ...)
    layer_weights      <->  layer_weights           (use_weighted_layer_sum only)
    projector.*        <->  projector.*             (head "hf")
    classifier.*       <->  classifier.*            (head "hf")

Head "dense_tanh" (soxan's, behind the model card's numbers) has `dense.*` and `out_proj.*` instead,
and attentive pooling adds `pooling.*`; neither exists in transformers. The heads are small enough
to live here as plain attributes, which is what keeps the mapping a rename; `hf_state_dict` and
`load_hf_state_dict` do that rename, and `hf_config` gives the matching transformers config.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # importing transformers' models takes seconds: an ONNX model is scored without them
    from transformers import PretrainedConfig, PreTrainedModel

from .encoder import receptive_field, uses_group_norm
from .pooling import build_pooling

HEAD_TYPES = ("hf", "dense_tanh", "emobox")


def check_batch(waveforms: Tensor, attention_mask: Tensor | None) -> None:
    """Refuse anything but waveforms (B, T) with an optional attention mask of the same shape."""
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms have shape {tuple(waveforms.shape)}: give a batch of mono clips, (B, T)")
    if attention_mask is not None and attention_mask.shape != waveforms.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but waveforms have {tuple(waveforms.shape)}: "
            "give one flag per sample"
        )


def apply_at_true_lengths(
    function: Callable[[Tensor], Tensor], waveforms: Tensor, attention_mask: Tensor | None
) -> Tensor:
    """``function`` of each clip at its true length, for models that must not see padding: (B, ...) rows.

    ``waveforms`` (B, T) are zero padded after each clip, ``attention_mask`` (B, T) marks the real
    samples (None: none is padded). ``function`` maps clips (b, t) to rows (b, ...). Clips of equal
    length share one call, so a batch of equal lengths is a single call, and a clip's result never
    depends on its batch.
    """
    if attention_mask is None:
        return function(waveforms)
    lengths = attention_mask.long().sum(dim=-1)
    if bool((lengths == waveforms.shape[1]).all()):
        return function(waveforms)
    result = None
    for length in torch.unique(lengths).tolist():
        rows = (lengths == length).nonzero(as_tuple=True)[0]
        part = function(waveforms[rows, :length])
        if result is None:
            result = part.new_empty(waveforms.shape[0], *part.shape[1:])
        result = result.index_copy(0, rows.to(part.device), part)
    return result


def normalize_utterances(frames: Tensor, mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Each clip's frames (B, T, D) to zero mean and unit variance over all its real frames and dims.

    ``F.layer_norm(frames, (T, D))`` of one unpadded clip, without affine weights, as EmoBox normalises
    the encoder's output (``--output_norm``); ``mask`` (B, T) True on real frames keeps padding out of the
    statistics. Padding comes back as it went in, scaled.
    """
    if mask is None:
        return nn.functional.layer_norm(frames, frames.shape[1:], eps=eps)
    weights = mask.to(frames.dtype).unsqueeze(-1)  # (B, T, 1)
    count = weights.sum(dim=(1, 2), keepdim=True) * frames.shape[-1]
    mean = (frames * weights).sum(dim=(1, 2), keepdim=True) / count
    variance = (((frames - mean) * weights) ** 2).sum(dim=(1, 2), keepdim=True) / count
    return (frames - mean) * torch.rsqrt(variance + eps)


class SpeechClassifier(nn.Module):
    """Encoder, optional weighted sum of its layers, masked pooling and a classification head.

    head "hf": `projector` Linear(D -> projector_dim) on every frame, pooling, dropout, `classifier`
    Linear -> num_labels; with mean pooling and no dropout this is `Wav2Vec2ForSequenceClassification`.
    head "dense_tanh": pooling, dropout, `dense` Linear(P -> P), tanh, dropout, `out_proj` Linear(P ->
    num_labels), P the pooled size. Unlike soxan's original, its mean pooling skips padding.
    ``utterance_norm`` normalises each clip's frames over time and dims before the head
    (:func:`normalize_utterances`).
    head "emobox": "hf" with a ReLU after the projector: EmoBox's frozen-encoder head (SUPERB's base
    model: Linear to projector_dim on every frame, ReLU, masked mean, Linear to num_labels).

    Padding: an encoder with a group-norm feature encoder (`uses_group_norm`) encodes each clip at
    its true length without a mask, so a clip's logits never depend on its batch; other encoders
    get the attention mask.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        num_labels: int,
        pooling: str = "mean",
        head: str = "hf",
        projector_dim: int = 256,
        head_dropout: float = 0.0,
        use_weighted_layer_sum: bool = False,
        utterance_norm: bool = False,
    ):
        super().__init__()
        if head not in HEAD_TYPES:
            raise ValueError(f"unknown head {head!r}: choose one of {', '.join(HEAD_TYPES)}")
        if num_labels < 1:
            raise ValueError(f"num_labels is {num_labels}: give the number of classes, at least 1")
        config = encoder.config
        self.encoder = encoder
        self.num_labels = num_labels
        self.head = head
        self.pooling_name = pooling
        self.use_weighted_layer_sum = use_weighted_layer_sum
        self.utterance_norm = utterance_norm
        self.encode_clips_alone = uses_group_norm(config)
        hidden_size = config.hidden_size

        if use_weighted_layer_sum:
            num_layers = config.num_hidden_layers + 1  # the embedding output counts as a layer
            self.layer_weights = nn.Parameter(torch.ones(num_layers) / num_layers)

        if head in ("hf", "emobox"):
            self.projector = nn.Linear(hidden_size, projector_dim)
            self.projector_activation = nn.ReLU() if head == "emobox" else nn.Identity()
            self.pooling = build_pooling(pooling, projector_dim)
            self.dropout = nn.Dropout(head_dropout)
            self.classifier = nn.Linear(self.pooling.output_dim, num_labels)
        else:
            self.projector = None
            self.projector_activation = nn.Identity()
            self.pooling = build_pooling(pooling, hidden_size)
            pooled = self.pooling.output_dim
            self.dropout = nn.Dropout(head_dropout)
            self.dense = nn.Linear(pooled, pooled)
            self.out_proj = nn.Linear(pooled, num_labels)

        # transformers' initialisation, so training from here is training transformers' model
        std = getattr(config, "initializer_range", 0.02)
        for module in self._head_modules():
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, std=std)
                    nn.init.zeros_(sub.bias)

    # --- forward --------------------------------------------------------------------------------

    def forward(self, waveforms: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, num_labels) for waveforms (B, T), with attention_mask (B, T) 1/True on real samples."""
        check_batch(waveforms, attention_mask)
        if attention_mask is not None:
            attention_mask = attention_mask.long()
            lengths = attention_mask.sum(dim=-1)
        else:
            lengths = torch.full(waveforms.shape[:1], waveforms.shape[1], device=waveforms.device)
        self._check_lengths(lengths)

        if attention_mask is None or not self.encode_clips_alone:
            pooled = self.pool(waveforms, attention_mask)
        else:
            # Clips of equal length share a pass: with no padding, a batch changes nothing.
            pooled = apply_at_true_lengths(lambda clips: self.pool(clips, None), waveforms, attention_mask)
        return self.classify(pooled)

    def _check_lengths(self, lengths: Tensor) -> None:
        frames = self.encoder._get_feat_extract_output_lengths(lengths)
        if (frames < 1).any():
            i = int(torch.argmin(frames))
            raise ValueError(
                f"clip {i} has {int(lengths[i])} samples, fewer than the {receptive_field(self.encoder.config)} "
                "the encoder needs for one frame: pad or drop such clips"
            )

    def _frames(self, waveforms: Tensor, attention_mask: Tensor | None) -> Tensor:
        outputs = self.encoder(
            waveforms,
            attention_mask=attention_mask,
            output_hidden_states=self.use_weighted_layer_sum,
            return_dict=True,
        )
        if not self.use_weighted_layer_sum:
            return outputs.last_hidden_state
        # exactly transformers' weighted sum, so exported weights give the same logits there
        hidden_states = torch.stack(outputs.hidden_states, dim=1)
        weights = nn.functional.softmax(self.layer_weights, dim=-1)
        return (hidden_states * weights.view(-1, 1, 1)).sum(dim=1)

    def pool(self, waveforms: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Pooled features (B, P) of waveforms (B, T), masked by attention_mask (B, T) 1/True on real samples.

        Unlike :meth:`forward` it checks nothing and passes padding to a group-norm encoder as it is:
        it has no Python control flow, so an exporter can trace it.
        """
        frames = self._frames(waveforms, attention_mask)
        mask = None
        if attention_mask is not None:
            mask = self.encoder._get_feature_vector_attention_mask(frames.shape[1], attention_mask)
        if self.utterance_norm:
            frames = normalize_utterances(frames, mask)
        if self.projector is not None:
            frames = self.projector_activation(self.projector(frames))
        return self.pooling(frames, mask)

    def forward_frames(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits (B, num_labels) of the encoder's hidden states, without running the encoder.

        ``frames``: the encoder's output (B, T, D), or with ``use_weighted_layer_sum`` every hidden state
        (B, T, L, D), the embedding output first, as a feature cache stores them; ``mask`` (B, T) True on
        real frames (None: none is padding). Gives :meth:`forward`'s logits for the audio they came from.
        """
        if self.use_weighted_layer_sum:
            expected = self.layer_weights.shape[0]
            if frames.dim() != 4 or frames.shape[2] != expected:
                raise ValueError(
                    f"frames have shape {tuple(frames.shape)}: a weighted layer sum needs all {expected} "
                    "hidden states, (B, T, L, D)"
                )
            weights = nn.functional.softmax(self.layer_weights, dim=-1)
            frames = (frames * weights.view(1, 1, -1, 1)).sum(dim=2)
        elif frames.dim() != 3:
            raise ValueError(f"frames have shape {tuple(frames.shape)}: give the encoder's output, (B, T, D)")
        if self.utterance_norm:
            frames = normalize_utterances(frames, mask)
        if self.projector is not None:
            frames = self.projector_activation(self.projector(frames))
        return self.classify(self.pooling(frames, mask))

    def classify(self, pooled: Tensor) -> Tensor:
        """Logits (B, num_labels) of pooled features (B, P)."""
        if self.head in ("hf", "emobox"):
            return self.classifier(self.dropout(pooled))
        hidden = torch.tanh(self.dense(self.dropout(pooled)))
        return self.out_proj(self.dropout(hidden))

    # --- training controls -----------------------------------------------------------------------

    def freeze_feature_encoder(self) -> None:
        """Stop training the CNN feature encoder (the usual setting when fine-tuning)."""
        self._set_feature_encoder_trainable(False)

    def set_encoder_trainable(self, trainable: bool, keep_feature_encoder_frozen: bool = True) -> None:
        """Train the whole encoder or none of it; the CNN feature encoder stays frozen if asked."""
        for param in self.encoder.parameters():
            param.requires_grad = trainable
        self._set_feature_encoder_trainable(trainable and not keep_feature_encoder_frozen)

    def _set_feature_encoder_trainable(self, trainable: bool) -> None:
        feature_encoder = self.encoder.feature_extractor
        for param in feature_encoder.parameters():
            param.requires_grad = trainable
        # transformers' own flag: when set, the feature encoder makes its input require grad for checkpointing
        feature_encoder._requires_grad = trainable

    def encoder_parameters(self) -> list[nn.Parameter]:
        """All encoder parameters, frozen ones included (so a later unfreeze needs no new optimizer)."""
        return list(self.encoder.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything else: layer_weights, projector, pooling and classifier layers."""
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]

    def _head_modules(self) -> list[nn.Module]:
        return [m for name, m in self.named_children() if name != "encoder"]


# --- transformers interchange ---------------------------------------------------------------------


def _check_hf_compatible(classifier: SpeechClassifier) -> None:
    if classifier.head != "hf" or classifier.pooling_name != "mean":
        raise ValueError(
            f"head {classifier.head!r} with {classifier.pooling_name!r} pooling has no transformers counterpart: "
            "only head 'hf' with mean pooling matches <Model>ForSequenceClassification"
        )
    if classifier.utterance_norm:
        raise ValueError("utterance_norm has no transformers counterpart: <Model>ForSequenceClassification lacks it")


def hf_config(classifier: SpeechClassifier, id2label: Mapping[int, str] | None = None) -> PretrainedConfig:
    """A config for transformers' `<Model>ForSequenceClassification` with this classifier's layout.

    `AutoModelForAudioClassification.from_config(hf_config(c))` then accepts `hf_state_dict(c)`.
    """
    _check_hf_compatible(classifier)
    config = copy.deepcopy(classifier.encoder.config)
    config.num_labels = classifier.num_labels
    if id2label is not None:
        config.id2label = {int(i): str(label) for i, label in id2label.items()}
        config.label2id = {label: i for i, label in config.id2label.items()}
    config.classifier_proj_size = classifier.projector.out_features
    config.use_weighted_layer_sum = classifier.use_weighted_layer_sum
    config.architectures = [type(classifier.encoder).__name__.removesuffix("Model") + "ForSequenceClassification"]
    return config


def hf_state_dict(classifier: SpeechClassifier) -> dict[str, Tensor]:
    """The classifier's weights under transformers' `<Model>ForSequenceClassification` names."""
    _check_hf_compatible(classifier)
    prefix = classifier.encoder.base_model_prefix
    return {
        (f"{prefix}.{key[len('encoder.') :]}" if key.startswith("encoder.") else key): value
        for key, value in classifier.state_dict().items()
    }


# Checkpoints saved before torch's parametrized weight norm (the 2021 ones) name the positional
# convolution's weight norm the old way.
_OLD_WEIGHT_NORM = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}


def load_hf_state_dict(classifier: SpeechClassifier, state_dict: Mapping[str, Tensor], strict: bool = True):
    """Load weights of a transformers `<Model>ForSequenceClassification` (or its saved file) in place.

    Returns what `nn.Module.load_state_dict` returns.
    """
    _check_hf_compatible(classifier)
    prefix = classifier.encoder.base_model_prefix + "."
    own_keys = set(classifier.state_dict())
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            key = "encoder." + key[len(prefix) :]
        for old, new in _OLD_WEIGHT_NORM.items():
            if key.endswith(old) and key not in own_keys:
                key = key[: -len(old)] + new
        renamed[key] = value
    return classifier.load_state_dict(renamed, strict=strict)

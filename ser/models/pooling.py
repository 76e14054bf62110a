"""Pooling a clip's frames into one vector, counting only the frames that are not padding.

Every pooling takes `frames` (B, F, D) and `mask` (B, F) bool, True for real frames (or None when
no frame is padding), and returns (B, output_dim). Padded frames may hold anything, NaN included:
they are overwritten before any arithmetic, so they can neither leak into the result nor poison
its gradient. Each row of the mask needs at least one True.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

POOLING_TYPES = ("mean", "max", "attentive", "stats")


class Pooling(nn.Module):
    """Base class: `dim` is D, the size of each frame; `output_dim` the size of the pooled vector."""

    def __init__(self, dim: int, output_dim: int | None = None):
        super().__init__()
        self.dim = dim
        self.output_dim = dim if output_dim is None else output_dim

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}, output_dim={self.output_dim}"


def _zero_padding(frames: Tensor, mask: Tensor) -> Tensor:
    # masked_fill rather than a multiply: 0 * NaN is NaN, and padding may hold anything
    return frames.masked_fill(~mask.unsqueeze(-1), 0.0)


def _check_mask(frames: Tensor, mask: Tensor) -> Tensor:
    if mask.shape != frames.shape[:2]:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but frames have {tuple(frames.shape)}: give one flag per frame, (B, F)"
        )
    return mask.bool()


class MeanPooling(Pooling):
    """Average of the real frames: (B, F, D) -> (B, D).

    Computed as transformers' `Wav2Vec2ForSequenceClassification` does (sum over real frames divided
    by their number, or `mean` over all frames without a mask), so both give the same bits.
    """

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return frames.mean(dim=1)
        mask = _check_mask(frames, mask)
        return _zero_padding(frames, mask).sum(dim=1) / mask.sum(dim=1).view(-1, 1)


class MaxPooling(Pooling):
    """Largest value of each feature over the real frames: (B, F, D) -> (B, D)."""

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            frames = frames.masked_fill(~_check_mask(frames, mask).unsqueeze(-1), float("-inf"))
        return frames.max(dim=1).values


class AttentivePooling(Pooling):
    """Weighted average of the real frames, with weights from a small learned scorer: (B, F, D) -> (B, D).

    Score per frame: w · tanh(W x + b); weights: softmax of the scores over the real frames only.
    """

    def __init__(self, dim: int, attention_dim: int = 128):
        super().__init__(dim)
        self.attention = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            mask = _check_mask(frames, mask)
            frames = _zero_padding(frames, mask)
        scores = self.attention(frames).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bf,bfd->bd", weights, frames)


class StatisticsPooling(Pooling):
    """Mean and standard deviation of the real frames, concatenated: (B, F, D) -> (B, 2 D).

    The deviation is the population one (divided by the number of frames, not one less), so a clip
    of a single frame gives 0 rather than NaN; `eps` keeps the square root differentiable there.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, output_dim=2 * dim)
        self.eps = eps

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            mean = frames.mean(dim=1)
            var = (frames - mean.unsqueeze(1)).pow(2).mean(dim=1)
        else:
            mask = _check_mask(frames, mask)
            count = mask.sum(dim=1).view(-1, 1).to(frames.dtype)
            frames = _zero_padding(frames, mask)
            mean = frames.sum(dim=1) / count
            deviation = _zero_padding(frames - mean.unsqueeze(1), mask)
            var = deviation.pow(2).sum(dim=1) / count
        return torch.cat([mean, (var + self.eps).sqrt()], dim=-1)


_POOLINGS = {"mean": MeanPooling, "max": MaxPooling, "attentive": AttentivePooling, "stats": StatisticsPooling}


def build_pooling(name: str, dim: int) -> Pooling:
    """The pooling called `name` (one of POOLING_TYPES) for frames of size `dim`."""
    if name not in _POOLINGS:
        raise ValueError(f"unknown pooling {name!r}: choose one of {', '.join(POOLING_TYPES)}")
    return _POOLINGS[name](dim)

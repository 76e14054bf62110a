"""Figures for people: the confusion matrix, training curves, per-class scores."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # runs on headless machines and inside Lightning workers
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics.utilities.plot import plot_confusion_matrix as _tm_plot_confusion_matrix  # noqa: E402


def plot_confusion_matrix(
    confusion: torch.Tensor, labels: Sequence[str], title: str | None = None, normalize: bool = True
):
    """Confusion matrix ``(C, C)`` (rows true, columns predicted) as a figure, with torchmetrics' plot.

    With ``normalize`` each row is shown as recall (the fraction of that emotion's clips), so classes
    of different sizes read alike.
    """
    confusion = confusion.detach().cpu().double()
    if normalize:
        confusion = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
        confusion = (confusion * 100).round() / 100  # two decimals in the cells
    figure, axis = _tm_plot_confusion_matrix(confusion, add_text=True, labels=list(labels))
    figure.set_size_inches(7, 6)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if title:
        axis.set_title(title, fontsize=9)
    return figure


def plot_curves(train_loss: Sequence[tuple[int, float]], validation: Sequence[dict]):
    """Loss and accuracy against optimizer step.

    Args:
        train_loss: ``(step, loss)`` per logged training step.
        validation: one dict per validation epoch with ``step`` and ``val/*`` (and ``train/acc``) values.
    """
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if train_loss:
        steps, losses = zip(*train_loss)
        loss_axis.plot(steps, losses, alpha=0.6, label="train")
    for key, axis, label in (
        ("val/loss", loss_axis, "validation"),
        ("train/acc", accuracy_axis, "train accuracy"),
        ("val/acc", accuracy_axis, "validation accuracy (WA)"),
        ("val/uar", accuracy_axis, "validation UA"),
    ):
        points = [(row["step"], row[key]) for row in validation if key in row]
        if points:
            axis.plot(*zip(*points), marker="o", label=label)
    loss_axis.set(title="loss", xlabel="optimizer step", ylabel="cross-entropy")
    accuracy_axis.set(title="accuracy", xlabel="optimizer step", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    figure.tight_layout()
    return figure


def plot_per_class(scores: dict[str, Sequence[float]], labels: Sequence[str], title: str | None = None):
    """Grouped bars of per-class scores, e.g. ``{"recall": [...], "f1": [...]}``, one value per label."""
    figure, axis = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / max(len(scores), 1)
    for offset, (name, values) in enumerate(scores.items()):
        axis.bar([i + offset * width for i in range(len(labels))], values, width=width, label=name)
    axis.set_xticks([i + width * (len(scores) - 1) / 2 for i in range(len(labels))], labels, rotation=30)
    axis.set(ylim=(0, 1), title=title or "")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure

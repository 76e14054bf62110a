"""Evaluate any model on a split of the corpus: the Python side of ``ser evaluate``.

    from ser.evaluate import evaluate

    metrics = evaluate(
        "outputs/.../checkpoints/best.ckpt", ["data.root=/data/ravdess", "data.split=fold", "data.fold=1"]
    )
    metrics = evaluate("ehcalabres/wav2vec2-lg-xlsr-en-speech-emotion-recognition", ["data.root=/data/ravdess"])

The data side (corpus, cache, split, seed) comes from the project's Hydra config and its overrides,
exactly as in training, so a number here and a number from ``python train.py`` are measured on the
same clips under the same ``protocol``. The model side (sample rate, normalisation, silence
trimming, labels) comes from the model: clips are prepared the way the model expects, and its labels
are matched to the corpus's emotions by name, so a model with another label order (or another
spelling, "fear" for "fearful") is scored correctly.

Output directory (default ``evaluations/<model>-<split>``): ``metrics.json`` (WA ``<stage>/acc``, UA
``<stage>/uar``, macro F1 ``<stage>/f1``, per-class recall and F1, the confusion matrix, the
``protocol``), ``confusion_matrix.png``, ``per_class.png`` and ``predictions.csv`` (one row per clip:
key, true and predicted emotion, every label's probability).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inference import PredictError, Scorer, as_scorer, score_waveforms
from .inference import progress_bar as _progress_bar

log = logging.getLogger(__name__)


def split_name(data: Any) -> str:
    """A short name of the split, for directory names: ``random``, ``speaker``, ``fold1``..``fold6``."""
    return f"fold{data.fold}" if data.split == "fold" else str(data.split)


def score_clips(
    scorer: Scorer, corpus, indices: Sequence[int], batch_size: int = 8, progress: bool = True
) -> np.ndarray:
    """Class probabilities (N, C) float32 of the corpus clips ``indices`` (prepared for this model).

    Whole clips, as training evaluates them. Raises PredictError when a clip cannot be scored.
    """
    waveforms = [corpus.waveform(int(i)) for i in indices]  # memory-map views, read as batches need them
    with _progress_bar(progress) as bar, scorer.inference():
        on_batch = None
        if bar is not None:
            task = bar.add_task(f"Evaluating {len(waveforms)} clips", total=len(waveforms))
            on_batch = lambda n: bar.advance(task, n)  # noqa: E731
        probabilities, errors = score_waveforms(scorer, waveforms, batch_size, on_batch)
    failed = [(corpus.clips[int(i)]["key"], error) for i, error in zip(indices, errors) if error is not None]
    if failed:
        raise PredictError(f"{len(failed)} clip(s) could not be scored, e.g. {failed[0][0]}: {failed[0][1]}")
    return probabilities


def label_indices(model_labels: Sequence[str], emotions: Sequence[str]) -> list[int]:
    """For each corpus emotion, the index of the model's label of that name (case and aliases ignored).

    Raises PredictError, in one line, when the model has no label for one of them.
    """
    from .hub import map_labels

    mapping = map_labels(model_labels, emotions)
    missing = [emotion for emotion, index in zip(emotions, mapping) if index is None]
    if missing:
        raise PredictError(
            f"the model has no label for {', '.join(missing)} (its labels: {', '.join(model_labels)}): "
            "it cannot be evaluated on this corpus"
        )
    return mapping


def compute_metrics(true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str], stage: str = "test") -> dict:
    """WA, UA, macro F1, per-class recall and F1, confusion matrix, with torchmetrics.

    ``true`` (N,) int: class indices into ``labels``; ``probabilities`` (N, C), C = ``len(labels)``.
    UA and macro F1 average over the labels that occur in ``true`` (torchmetrics' macro average when
    every label does): a label that the model has but the corpus lacks would only add zeros.
    Keys follow the training run's ``metrics.json``: ``<stage>/acc``, ``<stage>/uar``, ``<stage>/f1``,
    ``<stage>/recall/<label>``, ``<stage>/f1/<label>``; plus ``support`` and ``confusion_matrix``
    (C, C) counts, rows true, columns predicted.
    """
    from torchmetrics import ConfusionMatrix, MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

    num_classes = len(labels)
    metrics = MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "recall": MulticlassRecall(num_classes, average=None),
            "f1": MulticlassF1Score(num_classes, average=None),
            "confusion": ConfusionMatrix(task="multiclass", num_classes=num_classes),
        }
    )
    target = torch.as_tensor(np.asarray(true), dtype=torch.long)
    predicted = torch.as_tensor(np.asarray(probabilities)).argmax(dim=-1)
    values = metrics(predicted, target)
    support = torch.bincount(target, minlength=num_classes)
    present = support > 0
    result = {
        f"{stage}/acc": float(values["acc"]),
        f"{stage}/uar": float(values["recall"][present].mean()),
        f"{stage}/f1": float(values["f1"][present].mean()),
    }
    for i, label in enumerate(labels):
        if present[i]:
            result[f"{stage}/recall/{label}"] = float(values["recall"][i])
            result[f"{stage}/f1/{label}"] = float(values["f1"][i])
    result["support"] = {label: int(n) for label, n in zip(labels, support)}
    result["confusion_matrix"] = values["confusion"].tolist()
    return result


def _predictions_csv(keys: Sequence[str], true: Sequence[int], probabilities: np.ndarray, labels: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["key", "true", "predicted", *labels])
    for key, target, row in zip(keys, true, probabilities):
        writer.writerow([key, labels[target], labels[int(row.argmax())], *(f"{p:.6f}" for p in row)])
    return buffer.getvalue()


def write_report(
    out_dir: str | Path, metrics: dict, keys: Sequence[str], true: Sequence[int], probabilities: np.ndarray
) -> dict[str, Path]:
    """``metrics.json``, ``confusion_matrix.png``, ``per_class.png`` and ``predictions.csv``, each atomically."""
    import matplotlib.pyplot as plt

    from . import atomic
    from .plots import plot_confusion_matrix, plot_per_class

    out_dir = Path(out_dir)
    labels, stage = metrics["labels"], metrics["stage"]
    title = f"{metrics['model']} · {stage}, {metrics['clips']} clips\n{metrics['protocol']}"
    files = {"metrics": atomic.write_json(out_dir / "metrics.json", metrics)}
    figure = plot_confusion_matrix(torch.tensor(metrics["confusion_matrix"]), labels, title=title)
    files["confusion_matrix"] = atomic.save_figure(
        figure, out_dir / "confusion_matrix.png", dpi=120, bbox_inches="tight"
    )
    plt.close(figure)
    present = [label for label in labels if metrics["support"][label] > 0]
    scores = {
        "recall": [metrics[f"{stage}/recall/{label}"] for label in present],
        "F1": [metrics[f"{stage}/f1/{label}"] for label in present],
    }
    figure = plot_per_class(scores, present, title=title)
    files["per_class"] = atomic.save_figure(figure, out_dir / "per_class.png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    files["predictions"] = atomic.write_text(
        out_dir / "predictions.csv", _predictions_csv(keys, true, probabilities, labels)
    )
    return files


def evaluate(
    model: str | Path | Scorer | Any,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    stage: str = "test",
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate ``model`` on the ``stage`` clips of the split that the config with ``overrides`` makes.

    ``model``: a ``.ckpt``, ``.onnx``, Hugging Face directory or Hub name (see
    :func:`ser.inference.load_model`), or a loaded ``SERModule`` / :class:`~ser.inference.Scorer`.
    ``overrides``: Hydra overrides of the project config (``data.root=...``, ``data.split=fold``,
    ``data.fold=1``, ``seed=...``); only ``data.*`` and ``seed`` matter. ``batch_size`` defaults to
    ``data.eval_batch_size`` or ``data.batch_size``.

    Returns the metrics (as written to ``metrics.json``) and ``out_dir``, where the files went.
    """
    from .config import compose
    from .data.datamodule import RavdessDataModule
    from .data.ravdess import EMOTIONS
    from .data.splits import STAGES, describe_protocol

    if stage not in STAGES:
        raise PredictError(f"stage {stage!r} is unknown: choose one of {', '.join(STAGES)}")
    cfg = compose(list(overrides))
    data = cfg.data
    scorer = as_scorer(model)

    # The cache holds clips as the data config prepares them; a model trained on other input (another
    # rate, no normalisation, trimmed silence) gets the corpus prepared its way (another cache entry).
    ours = (scorer.sample_rate, scorer.normalize, scorer.trim_db)
    theirs = (data.sample_rate, bool(data.normalize), data.get("trim_db"))
    if ours != theirs:
        log.info(
            "the model expects %d Hz, normalize=%s, trim_db=%s (the data config says %d Hz, normalize=%s, "
            "trim_db=%s): preparing the corpus the model's way",
            *ours,
            *theirs,
        )
    datamodule = RavdessDataModule.from_config(
        data,
        seed=cfg.seed,
        progress=progress,
        sample_rate=scorer.sample_rate,
        normalize=scorer.normalize,
        trim_db=scorer.trim_db,
    )
    datamodule.setup()  # the corpus (synthesised or prepared if need be) and the split, as training makes them
    corpus, split = datamodule.corpus, datamodule.split
    indices = split[stage]
    if len(indices) == 0:
        raise PredictError(f"the {stage} part of the {split_name(data)} split is empty: evaluate another stage")
    clips = [corpus.clips[int(i)] for i in indices]
    emotions = [emotion for emotion in EMOTIONS if any(clip["emotion"] == emotion for clip in clips)]
    to_model = dict(zip(emotions, label_indices(scorer.labels, emotions)))
    true = np.array([to_model[clip["emotion"]] for clip in clips], dtype=np.int64)

    probabilities = score_clips(
        scorer, corpus, indices, batch_size or data.eval_batch_size or data.batch_size, progress
    )
    metrics = {
        "model": str(model) if isinstance(model, (str, Path)) else scorer.name,
        "stage": stage,
        "protocol": describe_protocol(data),
        "split": split_name(data),
        "seed": int(cfg.seed),
        "clips": len(indices),
        "corpus": corpus.source,
        "preparation": dict(corpus.settings),  # sample rate, normalisation, trimming: the model's
        "labels": list(scorer.labels),
        **compute_metrics(true, probabilities, scorer.labels, stage),
    }
    if out_dir is None:
        out_dir = Path("evaluations") / f"{scorer.name}-{split_name(data)}{'' if stage == 'test' else '-' + stage}"
    write_report(out_dir, metrics, [clip["key"] for clip in clips], true, probabilities)
    return {**metrics, "out_dir": str(out_dir)}


__all__ = ["compute_metrics", "evaluate", "label_indices", "score_clips", "split_name", "write_report"]

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inference import BATCH_SIZE, PredictError, Scorer, as_scorer, score_waveforms
from .inference import progress_bar as _progress_bar

log = logging.getLogger(__name__)


def split_name(data: Any) -> str:
    """A short name of the split, for directory names: ``random``, ``speaker``, ``fold1``..``fold6``."""
    return f"fold{data.fold}" if data.split == "fold" else str(data.split)


def score_clips(
    scorer: Scorer,
    corpus,
    indices: Sequence[int],
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    description: str = "Evaluating",
) -> np.ndarray:
    """Class probabilities (N, C) float32 of the corpus clips ``indices`` (prepared for this model).

    Whole clips, as training evaluates them; ``transform(waveform (T,), index)`` perturbs each first
    (:mod:`ser.data.perturb`). Raises PredictError when a clip cannot be scored.
    """
    waveforms = [corpus.waveform(int(i)) for i in indices]  # memory-map views, read as batches need them
    if transform is not None:
        waveforms = [transform(waveform, int(i)) for waveform, i in zip(waveforms, indices)]
    with _progress_bar(progress) as bar, scorer.inference():
        on_batch = None
        if bar is not None:
            task = bar.add_task(f"{description} {len(waveforms)} clips", total=len(waveforms))
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


def shared_labels(model_labels: Sequence[str], corpus_labels: Sequence[str]) -> tuple[dict[str, int], list, list]:
    """The labels a model and a corpus share: ``({corpus label: model index}, model's left out, corpus's left out)``.

    Names match case-insensitively and through aliases (:func:`ser.hub.map_labels`: "fear" is "fearful").
    """
    from .hub import map_labels

    mapping = map_labels(model_labels, corpus_labels)
    shared = {label: index for label, index in zip(corpus_labels, mapping) if index is not None}
    model_only = [label for i, label in enumerate(model_labels) if i not in set(shared.values())]
    corpus_only = [label for label in corpus_labels if label not in shared]
    return shared, model_only, corpus_only


def scoring_line(model_labels: Sequence[str], corpus_labels: Sequence[str]) -> str:
    """One line: which classes are scored, and which each side leaves out."""
    shared, model_only, corpus_only = shared_labels(model_labels, corpus_labels)
    if not model_only and not corpus_only:
        return f"scoring all {len(shared)} classes"
    return (
        f"scoring the {len(shared)} shared classes ({', '.join(model_labels[i] for i in sorted(shared.values()))}); "
        f"left out: the model's {', '.join(model_only) or 'none'}, the corpus's {', '.join(corpus_only) or 'none'}"
    )


def evaluate(
    model: str | Path | Scorer | Any,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    stage: str = "test",
    batch_size: int | None = None,
    progress: bool = True,
    perturb: Sequence[str] = (),
) -> dict:
    """Evaluate ``model`` on the ``stage`` clips of the split that the config with ``overrides`` makes.

    ``model``: a ``.ckpt``, ``.onnx``, Hugging Face directory or Hub name (see
    :func:`ser.inference.load_model`), or a loaded ``SERModule`` / :class:`~ser.inference.Scorer`.
    ``overrides``: Hydra overrides of the project config (``data=cremad``, ``data.root=...``,
    ``data.split=fold``, ``data.fold=1``, ``seed=...``); only ``data`` and ``seed`` matter. ``stage``:
    ``train``, ``val``, ``test`` or ``all`` (every clip, as for a corpus the model never saw).
    ``batch_size`` defaults to ``data.eval_batch_size`` or ``data.batch_size``. ``perturb``: specs of
    :mod:`ser.data.perturb` (``noise:snr=10``): the clips are scored again under each.

    A model is scored over the labels it shares with the corpus (``scoring`` says which; clips of
    other labels are left out, and the model's other classes are not predicted).

    Returns the metrics (as written to ``metrics.json``) and ``out_dir``, where the files went.
    """
    from .config import compose

    cfg = compose(list(overrides))
    return evaluate_data(model, cfg.data, cfg.seed, out_dir, stage, batch_size, progress, perturb)


def evaluate_data(
    model: str | Path | Scorer | Any,
    data: Any,
    seed: int,
    out_dir: str | Path | None = None,
    stage: str = "test",
    batch_size: int | None = None,
    progress: bool = True,
    perturb: Sequence[str] = (),
) -> dict:
    """:func:`evaluate` with a composed data config (``cfg.data``, or :func:`ser.config.compose_data`'s)."""
    from .data.datamodule import RavdessDataModule
    from .data.perturb import parse_perturbations, transform
    from .data.splits import STAGES, describe_protocol

    if stage not in (*STAGES, "all"):
        raise PredictError(f"stage {stage!r} is unknown: choose one of {', '.join(STAGES)}, all")
    perturbations = parse_perturbations(list(perturb))
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
        seed=seed,
        progress=progress,
        sample_rate=scorer.sample_rate,
        normalize=scorer.normalize,
        trim_db=scorer.trim_db,
    )
    if stage == "all":
        corpus = datamodule.load_corpus()
        indices = np.arange(len(corpus.clips))
        protocol = f"{data.get('corpus', 'ravdess')}: every clip"
    else:
        datamodule.setup()  # the corpus (synthesised or prepared if need be) and the split, as training makes them
        corpus, indices = datamodule.corpus, datamodule.split[stage]
        protocol = describe_protocol(data, datamodule.protocol)
    if len(indices) == 0:
        raise PredictError(f"the {stage} part of the {split_name(data)} split is empty: evaluate another stage")
    model_labels = list(scorer.labels)
    shared, model_only, corpus_only = shared_labels(model_labels, corpus.labels)
    if not shared:
        raise PredictError(
            f"the model's labels ({', '.join(model_labels)}) share none with the corpus's "
            f"({', '.join(corpus.labels)}): it cannot be evaluated on this corpus"
        )
    columns = sorted(shared.values())  # the model's shared classes, in its order
    labels = [model_labels[i] for i in columns]
    to_scored = {label: columns.index(index) for label, index in shared.items()}
    indices = np.array([i for i in indices if corpus.clips[int(i)]["emotion"] in to_scored], dtype=np.int64)
    if len(indices) == 0:
        raise PredictError(f"no {stage} clip has a label the model knows ({', '.join(labels)})")
    clips = [corpus.clips[int(i)] for i in indices]
    true = np.array([to_scored[clip["emotion"]] for clip in clips], dtype=np.int64)
    batch_size = batch_size or data.eval_batch_size or data.batch_size

    def scored(probabilities: np.ndarray) -> np.ndarray:
        kept = probabilities[:, columns]  # only the shared classes can be predicted
        return kept / np.clip(kept.sum(axis=1, keepdims=True), 1e-12, None)

    probabilities = scored(score_clips(scorer, corpus, indices, batch_size, progress))
    scoring = scoring_line(model_labels, corpus.labels)
    metrics = {
        "model": str(model) if isinstance(model, (str, Path)) else scorer.name,
        "stage": stage,
        "protocol": protocol,
        "split": split_name(data) if stage != "all" else "all",
        "seed": int(seed),
        "clips": len(indices),
        "corpus": corpus.source,
        "corpus_name": corpus.corpus,
        "preparation": dict(corpus.settings),  # sample rate, normalisation, trimming: the model's
        "labels": labels,
        "scoring": scoring,
        "left_out": {"model": model_only, "corpus": corpus_only},
        **compute_metrics(true, probabilities, labels, stage),
    }
    if perturbations:
        metrics["perturbed"] = {}
        for perturbation in perturbations:
            noisy = scored(
                score_clips(
                    scorer,
                    corpus,
                    indices,
                    batch_size,
                    progress,
                    transform(perturbation, corpus.sample_rate, seed),
                    description=f"Evaluating {perturbation.label} on",
                )
            )
            values = compute_metrics(true, noisy, labels, stage)
            metrics["perturbed"][perturbation.label] = {
                name: values[f"{stage}/{name}"] for name in ("acc", "uar", "f1")
            } | {
                f"drop/{name}": metrics[f"{stage}/{name}"] - values[f"{stage}/{name}"] for name in ("acc", "uar", "f1")
            }
    if out_dir is None:
        out_dir = Path("evaluations") / f"{scorer.name}-{split_name(data)}{'' if stage == 'test' else '-' + stage}"
    write_report(out_dir, metrics, [clip["key"] for clip in clips], true, probabilities)
    return {**metrics, "out_dir": str(out_dir)}


def parse_corpus_entry(entry: str) -> tuple[str, str | None]:
    """``"cremad"`` -> ``("cremad", None)``; ``"cremad:/data/CREMA-D"`` -> ``("cremad", "/data/CREMA-D")``."""
    name, _, root = str(entry).partition(":")
    return name.strip(), (root.strip() or None)


def evaluate_corpora(model: Any, cfg: Any, out_dir: str | Path, progress: bool = False) -> dict:
    """Score a trained model on every corpus of ``cfg.eval_corpora`` other than the one it trained on.

    Each corpus is composed from its ``conf/data/<corpus>.yaml`` (its root, unless the entry gives one),
    with the training run's cache, preparation and ``synthesize_actors``; every clip is scored over
    the labels the model and that corpus share. Returns ``cross/<corpus>/{acc,uar,f1}`` and
    ``cross/<corpus>/scoring`` (the one line saying which classes were scored); each report goes to
    ``out_dir/<corpus>/``.
    """
    from .config import compose_data

    results: dict = {}
    for entry in cfg.eval_corpora:
        name, root = parse_corpus_entry(entry)
        overrides = [f"data={name}", f"data.cache_dir={cfg.data.cache_dir}"]
        if root:
            overrides.append(f"data.root={root}")
        if cfg.data.synthesize_actors:
            overrides.append(f"data.synthesize_actors={cfg.data.synthesize_actors}")
        data = compose_data(overrides)
        if name == cfg.data.corpus and str(data.root) == str(cfg.data.root):
            continue  # the training corpus: its test split is test/*
        metrics = evaluate_data(model, data, cfg.seed, Path(out_dir) / name, stage="all", progress=progress)
        for key in ("acc", "uar", "f1"):
            results[f"cross/{name}/{key}"] = metrics[f"all/{key}"]
        results[f"cross/{name}/scoring"] = metrics["scoring"]
        log.info("cross-corpus %s: UA %.4f, %s", name, metrics["all/uar"], metrics["scoring"])
    return results


__all__ = [
    "compute_metrics",
    "evaluate",
    "evaluate_corpora",
    "evaluate_data",
    "label_indices",
    "score_clips",
    "shared_labels",
    "split_name",
    "write_report",
]

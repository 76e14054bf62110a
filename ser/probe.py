"""Which layer of an encoder carries emotion: a linear probe per layer and fold, on cached utterance means.

    from ser.probe import load_probe_encoder, run_probe

    result = run_probe(load_probe_encoder("facebook/wav2vec2-base"), corpus, cache_dir="~/.cache/ser", out_dir="probe")
    result.best_layer, result.rows  # rows: {"layer", "fold", "WA", "UA", "F1"}

Every layer's utterance means come from one pass of the frozen encoder over the corpus (:mod:`ser.features`,
cached, so a second probe of the same encoder and corpus runs no encoder at all). For each of the corpus's
speaker-independent folds (EmoBox's RAVDESS folds, :func:`ser.data.splits.make_split`) and each layer, a
linear classifier is fitted on the training actors' standardised means (full-batch L-BFGS, L2-regularised)
and scored on the fold's test actors with :func:`ser.evaluate.compute_metrics`. The output folder gets
``probe.csv`` (layer, fold, WA, UA, F1), ``probe.png`` (UA against layer, mean and spread over folds) and
``best_layer.json``.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from .atomic import save_figure, write_json, write_text
from .data.features import CachedFeatures
from .data.prepare import PreparedCorpus
from .data.ravdess import EMOBOX_FOLDS, EMOTIONS
from .data.splits import SplitError, make_split
from .errors import UserError
from .features import extract_features
from .models.encoder import build_encoder, load_encoder_config

log = logging.getLogger(__name__)

PROBE_COLUMNS = ("layer", "fold", "WA", "UA", "F1")
# L2 penalty on the probe's weights (on standardised inputs): keeps 768-dimensional probes fitted on
# about a thousand clips from memorising the training actors.
WEIGHT_DECAY = 1e-3
LBFGS_STEPS = 100


class ProbeError(UserError):
    """A probe that cannot run as asked; the message says what to change."""


@dataclass
class ProbeResult:
    rows: list[dict]  # one per layer and fold: layer, fold, WA, UA, F1
    best_layer: int
    best_ua: float  # mean over folds
    out_dir: Path
    extraction_seconds: float
    probe_seconds: float


def load_probe_encoder(spec: str | Path) -> tuple[PreTrainedModel, dict]:
    """The encoder named by ``spec`` and the preprocessing it expects (``{}``: the data config's).

    ``spec``: a Hugging Face encoder name or ``save_pretrained`` directory (its pretrained weights), or a
    ``.ckpt`` checkpoint of this project (its trained encoder, and the sample rate, normalisation and
    silence trimming it was trained with).
    """
    spec = str(spec)
    if spec.endswith(".ckpt"):
        if not Path(spec).expanduser().is_file():
            raise ProbeError(f"checkpoint {spec} does not exist: give a .ckpt file written by training")
        from .module import SERModule

        module = SERModule.load_from_checkpoint(Path(spec).expanduser(), map_location="cpu")
        hparams = module.hparams
        preprocessing = {key: hparams[key] for key in ("sample_rate", "normalize", "trim_db") if key in hparams}
        return module.model.encoder.eval(), preprocessing
    config = load_encoder_config(spec)
    return build_encoder(config, name_or_path=spec, pretrained=True).eval(), {}


def probe_folds(corpus: PreparedCorpus, folds: Sequence[int] | None) -> list[int]:
    """The folds to probe: those asked for, or every EmoBox fold with test actors in the corpus."""
    actors = {clip["actor"] for clip in corpus.clips}
    if folds:
        unknown = [f for f in folds if f not in EMOBOX_FOLDS]
        if unknown:
            raise ProbeError(f"fold {unknown[0]} is out of range: EmoBox's RAVDESS protocol has folds 1 to 6")
        return list(folds)
    present = [fold for fold, test in EMOBOX_FOLDS.items() if actors & set(test)]
    if not present:
        raise ProbeError("no EmoBox fold has its test actors in the corpus: probe a corpus with RAVDESS actors")
    return present


def fit_linear_probe(inputs: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int = 0) -> nn.Module:
    """A linear classifier (standardisation included) fitted on ``inputs`` (N, D) and ``labels`` (N,).

    Full-batch L-BFGS on the L2-regularised cross-entropy: convex, so the result hardly depends on the
    start, and a few dozen steps on a thousand clips take a fraction of a second on a CPU.
    """
    mean = inputs.mean(dim=0)
    std = inputs.std(dim=0).clamp(min=1e-6)
    torch.manual_seed(seed)
    linear = nn.Linear(inputs.shape[1], num_classes)
    standardised = (inputs - mean) / std
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(standardised), labels)
        loss = loss + WEIGHT_DECAY * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    probe = nn.Sequential(_Standardise(mean, std), linear)
    return probe.eval()


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - self.mean) / self.std


def probe_means(
    features: CachedFeatures,
    corpus: PreparedCorpus,
    folds: Sequence[int],
    labels: Sequence[str] = EMOTIONS,
    seed: int = 42,
    progress: bool = True,
) -> list[dict]:
    """One linear probe per layer and fold on the cached utterance means; rows of layer, fold, WA, UA, F1."""
    from rich.progress import track

    from .evaluate import compute_metrics

    means = torch.from_numpy(np.array(features.means, dtype=np.float32))  # (N, L, D), read into memory
    targets = torch.as_tensor(features.labels)
    splits = {}
    for fold in folds:
        try:
            # every actor outside the fold's test actors trains the probe: no validation set is needed
            splits[fold] = make_split(corpus.clips, "fold", seed=seed, fold=fold, val_actors=0)
        except SplitError as error:
            raise ProbeError(str(error)) from None
    jobs = [(fold, layer) for fold in folds for layer in range(means.shape[1])]
    rows = []
    for fold, layer in track(jobs, description=f"Probing {len(jobs)} layers x folds", disable=not progress):
        train, test = splits[fold]["train"], splits[fold]["test"]
        probe = fit_linear_probe(means[train, layer], targets[train], len(labels), seed=seed)
        with torch.no_grad():
            probabilities = torch.softmax(probe(means[test, layer]), dim=-1).numpy()
        metrics = compute_metrics(targets[test].numpy(), probabilities, labels)
        rows.append(
            {
                "layer": layer,
                "fold": fold,
                "WA": metrics["test/acc"],
                "UA": metrics["test/uar"],
                "F1": metrics["test/f1"],
            }
        )
    return rows


def layer_summary(rows: Sequence[dict]) -> dict[int, dict]:
    """Per layer: mean, std, min and max of UA over the folds."""
    summary = {}
    for layer in sorted({row["layer"] for row in rows}):
        ua = np.array([row["UA"] for row in rows if row["layer"] == layer])
        summary[layer] = {
            "mean": float(ua.mean()),
            "std": float(ua.std()),
            "min": float(ua.min()),
            "max": float(ua.max()),
        }
    return summary


def plot_probe(rows: Sequence[dict], title: str):
    """UA against layer: the mean over folds, a band from the worst to the best fold, and ± one std."""
    from .plots import plt

    summary = layer_summary(rows)
    layers = list(summary)
    mean = np.array([summary[layer]["mean"] for layer in layers])
    std = np.array([summary[layer]["std"] for layer in layers])
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.fill_between(
        layers,
        [summary[x]["min"] for x in layers],
        [summary[x]["max"] for x in layers],
        alpha=0.2,
        label="worst to best fold",
    )
    axis.errorbar(layers, mean, yerr=std, marker="o", capsize=3, label="mean ± std over folds")
    axis.set_xlabel("layer (0: the CNN's projected features)")
    axis.set_ylabel("UA (macro recall)")
    axis.set_xticks(layers)
    axis.set_title(title, fontsize=9)
    axis.legend()
    figure.tight_layout()
    return figure


def write_probe_report(rows: Sequence[dict], out_dir: Path, title: str) -> tuple[int, float]:
    """``probe.csv``, ``probe.png`` and ``best_layer.json`` in ``out_dir``; returns the best layer and its mean UA."""
    from .plots import plt

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PROBE_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {key: (f"{row[key]:.4f}" if isinstance(row[key], float) else row[key]) for key in PROBE_COLUMNS}
        )
    write_text(out_dir / "probe.csv", buffer.getvalue())
    figure = plot_probe(rows, title)
    save_figure(figure, out_dir / "probe.png", dpi=120)
    plt.close(figure)
    summary = layer_summary(rows)
    best = max(summary, key=lambda layer: summary[layer]["mean"])
    write_json(
        out_dir / "best_layer.json",
        {"best_layer": best, "UA_mean": summary[best]["mean"], "UA_std": summary[best]["std"], "layers": summary},
    )
    return best, summary[best]["mean"]


def run_probe(
    encoder: PreTrainedModel,
    corpus: PreparedCorpus,
    cache_dir: str | Path,
    out_dir: str | Path,
    folds: Sequence[int] | None = None,
    seed: int = 42,
    title: str | None = None,
    frames: str | int = "none",
    autocast: str | None = None,
    progress: bool = True,
) -> ProbeResult:
    """Extract (or reuse) every layer's utterance means, probe each layer on each fold, write the report.

    ``frames`` is passed to :func:`ser.features.extract_features`: the probe needs none, but naming the
    frames of an existing cache reuses it.
    """
    folds = probe_folds(corpus, folds)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    features = extract_features(encoder, corpus, cache_dir, frames=frames, autocast=autocast, progress=progress)
    extracted = time.perf_counter()
    rows = probe_means(features, corpus, folds, seed=seed, progress=progress)
    probed = time.perf_counter()
    name = title or features.meta["encoder"]
    best, best_ua = write_probe_report(rows, out_dir, f"linear probe per layer: {name}, {len(folds)} fold(s)")
    log.info("probe of %d layers x %d folds in %.1f s", features.num_layers, len(folds), probed - extracted)
    return ProbeResult(rows, best, best_ua, out_dir, extracted - start, probed - extracted)

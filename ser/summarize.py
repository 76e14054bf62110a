"""One table for a Hydra multirun: every job's scores, then their mean ± std.

    python train.py -m data.split=fold data.fold=1,2,3,4,5,6      # a sweep: multirun/<date>/<time>/0 ... 5
    ser summarize multirun/2024-05-01/12-00-00                     # test/acc, test/uar, test/f1
    ser summarize multirun/2024-05-01/12-00-00 --metric test/uar --metric best/val/uar

or from Python:

    from ser.summarize import summarize

    summary = summarize("multirun/2024-05-01/12-00-00", metrics=["test/uar"])
    summary.mean["test/uar"], summary.std["test/uar"], [job.label for job in summary.jobs]

The table is printed, and ``summary.md``, ``summary.csv`` and ``summary.png`` are written into the
sweep directory (``write=False`` writes nothing). A cross-corpus multirun (``python train.py -m
data=ravdess,cremad,tess eval_corpora=[ravdess,cremad,tess]``) also gets its train → test matrix of UA
(the diagonal is each corpus's own test split), printed and written as ``cross_corpus.md``,
``cross_corpus.csv`` and the heat map ``cross_corpus.png``. Any sweep works (folds, learning rates, seeds): a
job is labelled by the overrides that differ between jobs, so ``data.fold=3`` rather than the whole
command line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import atomic
from .errors import UserError

PRUNED_FILE = "pruned.json"  # written into a job's directory by ser.pruning when the search stops the trial

DEFAULT_METRICS = ("test/acc", "test/uar", "test/f1")
MAX_TICK_LABEL = 40  # characters of a job's label under its bar in summary.png


class SummaryError(UserError, ValueError):
    """A directory that holds no Hydra multirun jobs to summarise."""


@dataclass
class Job:
    """One job of the sweep, read from its directory."""

    path: Path  # the job directory, e.g. <sweep>/3
    name: str  # its path relative to the sweep directory, e.g. "3"
    overrides: list[str]  # all of its command-line overrides, as Hydra recorded them
    label: str  # only the overrides that vary across the sweep, e.g. "data.fold=3"
    status: str  # "finished" (metrics.json written), "pruned" (an Optuna trial stopped early) or "failed"
    reason: str | None  # failed: the last line of its log that mentions an error; pruned: when
    metrics: dict[str, float]  # the requested metrics it reported (NaN where one is missing)
    protocol: str | None  # the evaluation protocol from metrics.json


@dataclass
class Summary:
    """What ``summarize`` found; mean and std are over finished jobs only, std with ddof=1."""

    sweep_dir: Path
    metrics: tuple[str, ...]
    jobs: list[Job]
    mean: dict[str, float]
    std: dict[str, float]
    n: dict[str, int]  # per metric: the finished jobs with a finite value of it
    protocol: str  # one line: the shared protocol, or the protocols of the jobs
    files: list[Path] = field(default_factory=list)  # what was written (empty with write=False)
    matrix: CrossCorpus | None = None  # the train -> test UA matrix of a cross-corpus multirun

    @property
    def finished(self) -> list[Job]:
        return [job for job in self.jobs if job.status == "finished"]

    def percent(self, metric: str) -> bool:
        """Accuracies and the like are fractions and read best as percentages; a loss is not one."""
        values = [job.metrics[metric] for job in self.finished if math.isfinite(job.metrics[metric])]
        return all(0.0 <= value <= 1.0 for value in values)

    def format(self, metric: str, value: float) -> str:
        if not math.isfinite(value):
            return "–"
        return f"{100 * value:.1f}" if self.percent(metric) else f"{value:.4g}"

    def header(self, metric: str) -> str:
        return f"{metric} (%)" if self.percent(metric) else metric

    def aggregate(self, metric: str) -> str:
        """``mean ± std``, with the count where it differs from the number of finished jobs."""
        text = f"{self.format(metric, self.mean[metric])} ± {self.format(metric, self.std[metric])}"
        return text if self.n[metric] == len(self.finished) else f"{text} (n={self.n[metric]})"


@dataclass
class CrossCorpus:
    """UA of each training corpus (rows) on each test corpus (columns), the mean over jobs where several train
    on one corpus; NaN where no job scored that pair. The diagonal is each corpus's own test split."""

    train: list[str]
    test: list[str]
    uar: np.ndarray  # (len(train), len(test))
    scoring: dict[tuple[str, str], str]  # (train, test) -> which classes were scored, in one line


def cross_corpus_matrix(jobs: Sequence[Job]) -> CrossCorpus | None:
    """The matrix of the finished jobs that scored other corpora (``cross/<corpus>/uar``), or None."""
    scores: dict[tuple[str, str], list[float]] = {}
    scoring: dict[tuple[str, str], str] = {}
    for job in jobs:
        if job.status != "finished":
            continue
        reported = json.loads((job.path / "metrics.json").read_text())
        cross = {k.split("/")[1]: v for k, v in reported.items() if k.startswith("cross/") and k.endswith("/uar")}
        if not cross:
            continue
        train = str(reported.get("corpus", "ravdess"))
        if isinstance(reported.get("test/uar"), (int, float)):
            scores.setdefault((train, train), []).append(float(reported["test/uar"]))
        for test, value in cross.items():
            scores.setdefault((train, test), []).append(float(value))
            scoring[(train, test)] = str(reported.get(f"cross/{test}/scoring", ""))
    if not scores:
        return None
    train = list(dict.fromkeys(t for t, _ in scores))
    test = list(dict.fromkeys([*train, *(c for _, c in scores)]))
    uar = np.full((len(train), len(test)), np.nan)
    for (row, column), values in scores.items():
        uar[train.index(row), test.index(column)] = float(np.mean(values))
    return CrossCorpus(train, test, uar, scoring)


def _matrix_markdown(matrix: CrossCorpus) -> str:
    cells = [["train \\ test", *matrix.test], ["---", *("---:" for _ in matrix.test)]]
    for i, row in enumerate(matrix.train):
        cells.append([row, *(f"{100 * v:.1f}" if math.isfinite(v) else "–" for v in matrix.uar[i])])
    lines = ["# Cross-corpus UA (%): train corpus x test corpus", ""]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    lines += ["", "The diagonal is each corpus's own test split; off it, every clip of the test corpus."]
    lines += [f"- {a} -> {b}: {text}" for (a, b), text in sorted(matrix.scoring.items())]
    return "\n".join(lines) + "\n"


def _matrix_csv(matrix: CrossCorpus) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["train", *matrix.test])
    for i, row in enumerate(matrix.train):
        writer.writerow([row, *matrix.uar[i]])
    return buffer.getvalue()


def _matrix_plot(matrix: CrossCorpus, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.2 * len(matrix.test) + 2.5, 1.0 * len(matrix.train) + 1.8))
    image = axis.imshow(100 * matrix.uar, cmap="viridis", vmin=0, vmax=100)
    for (i, j), value in np.ndenumerate(matrix.uar):
        text = f"{100 * value:.1f}" if math.isfinite(value) else "–"
        axis.text(j, i, text, ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=9)
    axis.set_xticks(range(len(matrix.test)), matrix.test)
    axis.set_yticks(range(len(matrix.train)), matrix.train)
    axis.set_xlabel("test corpus")
    axis.set_ylabel("train corpus")
    axis.set_title("cross-corpus UA (%)", fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    try:
        return atomic.save_figure(figure, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)


def _print_matrix(matrix: CrossCorpus) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("train \\ test", *matrix.test, title="cross-corpus UA (%)")
    for i, row in enumerate(matrix.train):
        table.add_row(row, *(f"{100 * v:.1f}" if math.isfinite(v) else "–" for v in matrix.uar[i]))
    console = Console(soft_wrap=True)
    console.print(table)
    for (a, b), text in sorted(matrix.scoring.items()):
        console.print(f"{a} -> {b}: {text}", markup=False, highlight=False)


def summarize(
    sweep_dir: str | Path, metrics: Sequence[str] = DEFAULT_METRICS, write: bool = True, quiet: bool = False
) -> Summary:
    """Read every job of the Hydra multirun under ``sweep_dir``, print a table, write the summary files.

    ``quiet=True`` prints nothing: a sweep rewrites its summary after every job and prints it once.

    Jobs are the directories holding ``.hydra/overrides.yaml``, at any depth (``hydra.sweep.subdir``
    may nest them). A job without ``metrics.json`` counts as failed, with the last error line of its
    log as the reason, and is left out of the mean and std. A job with ``pruned.json`` is an Optuna trial
    that the search stopped early: it is listed as pruned and left out of the mean and std too.

    Raises:
        SummaryError: ``sweep_dir`` holds no Hydra job.
    """
    sweep_dir = Path(sweep_dir)
    metrics = tuple(metrics)
    job_dirs = sorted((p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")), key=_natural_key)
    if not job_dirs:
        raise SummaryError(
            f"no Hydra multirun jobs under {sweep_dir}: "
            "point ser summarize at a directory made by `python train.py -m ...`"
        )

    overrides = [yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or [] for d in job_dirs]
    labels = _labels(overrides)
    jobs = []
    for job_dir, job_overrides, label in zip(job_dirs, overrides, labels):
        name = job_dir.relative_to(sweep_dir).as_posix()
        name = sweep_dir.name if name == "." else name  # a single run's directory, not a sweep
        jobs.append(_read_job(job_dir, name, job_overrides, label or name, metrics))

    mean, std, n = {}, {}, {}
    for metric in metrics:
        values = np.array([job.metrics[metric] for job in jobs if job.status == "finished"], dtype=float)
        values = values[np.isfinite(values)]
        n[metric] = len(values)
        mean[metric] = float(values.mean()) if len(values) else math.nan
        std[metric] = float(values.std(ddof=1)) if len(values) > 1 else math.nan  # one run says nothing of spread
    protocol = _describe_protocols([job.protocol for job in jobs if job.protocol])
    summary = Summary(sweep_dir, metrics, jobs, mean, std, n, protocol, matrix=cross_corpus_matrix(jobs))

    if not quiet:
        _print(summary)
        if summary.matrix is not None:
            _print_matrix(summary.matrix)
    if write:
        summary.files = [
            atomic.write_text(sweep_dir / "summary.md", _markdown(summary)),
            atomic.write_text(sweep_dir / "summary.csv", _csv(summary)),
            _plot(summary, sweep_dir / "summary.png"),
        ]
        if summary.matrix is not None:
            summary.files += [
                atomic.write_text(sweep_dir / "cross_corpus.md", _matrix_markdown(summary.matrix)),
                atomic.write_text(sweep_dir / "cross_corpus.csv", _matrix_csv(summary.matrix)),
                _matrix_plot(summary.matrix, sweep_dir / "cross_corpus.png"),
            ]
        if not quiet:
            print(f"wrote {', '.join(str(path) for path in summary.files)}")
    return summary


def _natural_key(path: Path) -> list:
    """Job 10 after job 9, not after job 1."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def _labels(overrides: list[list[str]]) -> list[str]:
    """Each job's overrides that not all jobs share (a constant ``data.split=fold`` tells nothing apart)."""
    common = set.intersection(*(set(job) for job in overrides))
    return [",".join(o for o in job if o not in common) for job in overrides]


def _read_job(job_dir: Path, name: str, overrides: list[str], label: str, metrics: tuple[str, ...]) -> Job:
    metrics_file = job_dir / "metrics.json"
    reported = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    values = {m: float(reported[m]) if isinstance(reported.get(m), (int, float)) else math.nan for m in metrics}
    if (job_dir / PRUNED_FILE).is_file():
        pruned = json.loads((job_dir / PRUNED_FILE).read_text())
        monitored = ", ".join(f"{k} {v:.4f}" for k, v in pruned.items() if "/" in k and isinstance(v, (int, float)))
        reason = f"after validation {pruned.get('validation')} ({monitored})"
        return Job(job_dir, name, overrides, label, "pruned", reason, values, reported.get("protocol"))
    if not metrics_file.is_file():
        return Job(job_dir, name, overrides, label, "failed", _error_line(job_dir), values, None)
    return Job(job_dir, name, overrides, label, "finished", None, values, reported.get("protocol"))


def _error_line(job_dir: Path) -> str | None:
    """The last log line mentioning an error, without Hydra's ``[time][logger][LEVEL] - `` prefix."""
    logs = sorted(job_dir.glob("*.log"), key=lambda p: p.name != "train.log")  # train.py's own log first
    for log in logs:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if "error" in line.lower()]
        if lines:
            return re.sub(r"^(\[[^\]]*\])+\s*-\s*", "", lines[-1])
    return None


def _describe_protocols(protocols: list[str]) -> str:
    """The shared protocol once; folds of one protocol as a range ("... folds 1-6"); otherwise a list."""
    distinct = list(dict.fromkeys(protocols))
    if not distinct:
        return "unknown (no job finished)"
    if len(distinct) == 1:
        return distinct[0]
    folds = [re.fullmatch(r"(.*) fold (\d+) of (\d+)", p) for p in distinct]
    if all(folds) and len({(m[1], m[3]) for m in folds}) == 1:
        numbers = sorted(int(m[2]) for m in folds)
        total = int(folds[0][3])
        of = "" if numbers == list(range(1, total + 1)) else f" (of {total})"
        return f"{folds[0][1]} folds {_ranges(numbers)}{of}"
    return "; ".join(distinct)


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _status(job: Job) -> str:
    return f"{job.status}: {job.reason}" if job.status != "finished" and job.reason else job.status


def _print(summary: Summary) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text cells: labels and log lines may hold brackets that rich would read as markup
    table = Table(title=f"{summary.sweep_dir}: {len(summary.jobs)} jobs", caption=f"protocol: {summary.protocol}")
    table.add_column("job", overflow="fold")
    table.add_column("status", overflow="fold")
    for metric in summary.metrics:
        table.add_column(summary.header(metric), justify="right")
    for job in summary.jobs:
        style = "red" if job.status == "failed" else ""
        table.add_row(
            Text(job.label),
            Text(_status(job), style=style),
            *(summary.format(m, job.metrics[m]) for m in summary.metrics),
        )
    table.add_section()
    table.add_row(
        Text(f"mean ± std (n={len(summary.finished)})", style="bold"),
        "",
        *(summary.aggregate(m) for m in summary.metrics),
    )
    Console().print(table)


def _markdown(summary: Summary) -> str:
    def row(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", r"\|") for cell in cells) + " |"

    lines = [
        f"# Sweep summary: {summary.sweep_dir.name}",
        "",
        f"Protocol: {summary.protocol}",
        "",
        row(["job", "status", *(summary.header(m) for m in summary.metrics)]),
        row(["---", "---", *("---:" for _ in summary.metrics)]),
    ]
    for job in summary.jobs:
        lines.append(row([job.label, _status(job), *(summary.format(m, job.metrics[m]) for m in summary.metrics)]))
    lines.append(
        row([f"**mean ± std** (n={len(summary.finished)})", "", *(summary.aggregate(m) for m in summary.metrics)])
    )
    return "\n".join(lines) + "\n"


def _csv(summary: Summary) -> str:
    """Raw floats (not percentages); the mean and std rows say over how many finished jobs in ``status``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["job", "label", "status", "reason", "protocol", *summary.metrics])
    for job in summary.jobs:
        writer.writerow(
            [
                job.name,
                job.label,
                job.status,
                job.reason or "",
                job.protocol or "",
                *(job.metrics[m] for m in summary.metrics),
            ]
        )
    for name, values in (("mean", summary.mean), ("std", summary.std)):
        writer.writerow(
            [name, "", f"n={len(summary.finished)}", "", summary.protocol, *(values[m] for m in summary.metrics)]
        )
    return buffer.getvalue()


def _plot(summary: Summary, path: Path) -> Path:
    """One panel per metric: a bar per job, the mean as a line and ± std as a band; failed jobs keep their place."""
    import matplotlib

    matplotlib.use("Agg")  # headless machines
    import matplotlib.pyplot as plt

    # An Optuna trial's label (every searched value in full) would not fit under its bar: the job's
    # directory name does, and summary.csv pairs it with the label.
    by_name = any(len(job.label) > MAX_TICK_LABEL for job in summary.jobs)
    ticks = [job.name if by_name else job.label for job in summary.jobs]
    labels = [tick if job.status == "finished" else f"{tick}\n({job.status})" for tick, job in zip(ticks, summary.jobs)]
    x = np.arange(len(summary.jobs))
    figure, axes = plt.subplots(
        len(summary.metrics),
        1,
        sharex=True,
        squeeze=False,
        figsize=(max(6.0, 0.7 * len(x) + 2), 2.4 * len(summary.metrics) + 1),
    )
    for axis, metric in zip(axes[:, 0], summary.metrics):
        scale = 100 if summary.percent(metric) else 1
        values = np.array([job.metrics[metric] for job in summary.jobs]) * scale
        axis.bar(x, np.nan_to_num(values), color=["C0" if np.isfinite(v) else "none" for v in values])
        mean, std = summary.mean[metric] * scale, summary.std[metric] * scale
        if math.isfinite(mean):
            axis.axhline(mean, color="C3", label=f"mean {summary.aggregate(metric)}")
            if math.isfinite(std):
                axis.axhspan(mean - std, mean + std, color="C3", alpha=0.15)
            axis.legend(loc="lower right", fontsize=8)
        axis.set_ylabel(summary.header(metric))
        axis.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(x, labels, rotation=30 if len(x) > 4 else 0, ha="right" if len(x) > 4 else "center")
    if by_name:
        axes[-1, 0].set_xlabel("job (its overrides: summary.csv)")
    figure.suptitle(f"{summary.sweep_dir.name}: {summary.protocol}", fontsize=9)
    figure.tight_layout()
    try:
        return atomic.save_figure(figure, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)  # a notebook summarising many sweeps should not keep every figure alive

"""``summarize``: sweep directories fabricated by hand (Hydra's layout, no training)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ser.summarize import summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_job(job_dir: Path, overrides: list[str], metrics: dict | None = None, log: str | None = None) -> None:
    """A job directory as Hydra and train.py leave it; no ``metrics`` means the job died."""
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job_dir / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (job_dir / "train.log").write_text(log)


def test_fold_sweep(tmp_path, capsys):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.4, 0.8, size=(6, 3))  # acc, uar, f1 per fold
    for i, (acc, uar, f1) in enumerate(scores):
        make_job(
            tmp_path / str(i),
            ["data.split=fold", f"data.fold={i + 1}"],
            {
                "test/acc": acc,
                "test/uar": uar,
                "test/f1": f1,
                "protocol": f"EmoBox speaker-independent fold {i + 1} of 6",
            },
        )

    summary = summarize(tmp_path)

    assert [job.label for job in summary.jobs] == [f"data.fold={i}" for i in range(1, 7)]
    assert all(job.status == "finished" for job in summary.jobs)
    for column, metric in enumerate(("test/acc", "test/uar", "test/f1")):
        assert summary.mean[metric] == pytest.approx(np.mean(scores[:, column]))
        assert summary.std[metric] == pytest.approx(np.std(scores[:, column], ddof=1))
        assert summary.n[metric] == 6
    assert summary.protocol == "EmoBox speaker-independent folds 1-6"

    printed = capsys.readouterr().out
    assert "data.fold=6" in printed and "data.split" not in printed
    markdown = (tmp_path / "summary.md").read_text()
    assert "| data.fold=3 | finished |" in markdown
    assert f"{100 * summary.mean['test/uar']:.1f} ± {100 * summary.std['test/uar']:.1f}" in markdown
    with open(tmp_path / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["job"] for row in rows] == [*map(str, range(6)), "mean", "std"]
    assert float(rows[2]["test/acc"]) == pytest.approx(scores[2, 0])  # raw fractions, not percentages
    assert float(rows[-2]["test/f1"]) == pytest.approx(summary.mean["test/f1"])
    assert float(rows[-1]["test/f1"]) == pytest.approx(summary.std["test/f1"])
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(summary.files) == sorted(tmp_path / name for name in ("summary.md", "summary.csv", "summary.png"))


def test_lr_sweep_with_a_failed_job(tmp_path):
    protocol = "random stratified 80/20 split (speakers shared between train and test)"
    # one level deeper than Hydra's default, as a custom hydra.sweep.subdir may put it
    finished = {"1e-4": 0.70, "3e-4": 0.60, "3e-3": 0.50}
    for lr, uar in finished.items():
        make_job(
            tmp_path / "lr" / lr, ["experiment=demo", f"optimizer.lr={lr}"], {"test/uar": uar, "protocol": protocol}
        )
    log = (
        "[2024-05-01 12:00:00,000][ser.train][INFO] - run directory: ...\n"
        "[2024-05-01 12:00:01,000][ser.train][ERROR] - error: grad norm is inf\n"
        "[2024-05-01 12:00:02,000][ser.train][ERROR] - error: loss became nan at step 3 (lr 1e-2 is too high)\n"
        "[2024-05-01 12:00:03,000][ser.train][INFO] - shutting down\n"
    )
    make_job(tmp_path / "lr" / "1e-2", ["experiment=demo", "optimizer.lr=1e-2"], log=log)

    summary = summarize(tmp_path, metrics=["test/uar"])

    failed = [job for job in summary.jobs if job.status == "failed"]
    assert [job.label for job in failed] == ["optimizer.lr=1e-2"]
    assert failed[0].reason == "error: loss became nan at step 3 (lr 1e-2 is too high)"
    assert math.isnan(failed[0].metrics["test/uar"])
    assert summary.mean["test/uar"] == pytest.approx(np.mean(list(finished.values())))
    assert summary.std["test/uar"] == pytest.approx(np.std(list(finished.values()), ddof=1))
    assert summary.n["test/uar"] == 3
    assert summary.protocol == protocol
    assert "| optimizer.lr=1e-2 | failed: error: loss became nan at step 3" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_directory_without_jobs_says_what_to_point_at(tmp_path):
    (tmp_path / "0").mkdir()  # a directory, but no .hydra/overrides.yaml in it
    with pytest.raises(ValueError, match=r"no Hydra multirun jobs under .*python train.py -m"):
        summarize(tmp_path)

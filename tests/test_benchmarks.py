"""The benchmark scripts run end to end (``--quick``) and write their section of a benchmarks file.

Only that the figures are there is checked, never their values: speed is measured by the scripts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .helpers import REPO, run_python


def run_benchmark(script: str, output: Path) -> str:
    """Run ``benchmarks/<script> --quick --output output``; returns its section of ``output``."""
    result = run_python(
        [REPO / "benchmarks" / script, "--quick", "--output", output],
        REPO,
        env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},  # the benchmarks count the threads they get
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name = script.removesuffix(".py")
    sections = re.split(r"^## ", output.read_text(), flags=re.M)
    section = next(s for s in sections if s.startswith(f"{name}\n"))
    assert section.split("\n")[2].startswith("Measured ") and "cores usable" in section
    return section


def row(section: str, label: str) -> list[str]:
    """The cells after ``label`` in the section's table row that starts with it."""
    line = next(line for line in section.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")[1:]]


@pytest.mark.slow
def test_train_benchmark_writes_its_section(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\n## prepare\n\nkept as it was\n")
    section = run_benchmark("train.py", output)
    assert "## prepare\n\nkept as it was" in output.read_text()
    percent, number = r"\d+(\.\d+)?%", r"\d+(\.\d+)?"
    for label, pattern in [
        ("training throughput (clips/s)", number),
        ("throughput / recipe's", number + "x"),
        ("padded encoder frames", percent),
        ("loop time waiting for data", percent),
        ("peak memory, process RSS (MiB)", number),
        ("validation accuracy (WA)", percent),
    ]:
        cells = row(section, label)
        assert len(cells) == 3 and all(re.fullmatch(pattern, cell) for cell in cells), (label, cells)
    assert "target 1.5x" in section


@pytest.mark.slow
def test_predict_benchmark_writes_its_section(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    section = run_benchmark("predict.py", output)
    for side in ("ser predict", "pipeline(), batch 1"):
        clips_per_second, speed_up = row(section, side)[:2]
        assert re.fullmatch(r"\d+(\.\d+)?", clips_per_second) and re.fullmatch(r"\d+(\.\d+)?x", speed_up)
    assert "target 2x" in section


@pytest.mark.slow
def test_start_benchmark_writes_its_section(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    section = run_benchmark("start.py", output)
    seconds, since_launch = row(section, "first training batch in hand")
    assert re.fullmatch(r"\d+\.\d\d", seconds) and re.fullmatch(r"\d+\.\d\d", since_launch)
    assert "Warm-cache start of training (launch to the first training batch)" in section
    assert re.search(r"\| worker 1 \| \d+ \| \d+ \|", section)  # two workers, their memory read

"""The benchmark scripts run end to end (``--quick``) and write their section of a benchmarks file.

Only that the figures are there is checked, never their values: speed is measured by the scripts.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

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


# The CPU budget of benchmarks/gpu.py (600 s), which bounds the check, and a margin for its start and its outputs
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_check_cpu(tmp_path):
    """The prepared GPU check, on the CPU at tiny sizes: every step passes or says why the CPU skips it, and
    the gpu section holds the machine's facts and the steps' figures."""
    out = tmp_path / "gpu-check"
    benchmarks_md = (REPO / "BENCHMARKS.md").read_text()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--cpu", "--out", str(out)],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    steps = re.findall(r"^(pass|fail|skip)  (\S+)  [\d.]+ s(?:  (.*))?$", summary, flags=re.M)
    assert len(steps) == len(summary.splitlines())
    assert result.stdout.split("=== summary\n")[1].startswith(summary)  # the console ends with the same lines
    passed = {name for status, name, _ in steps if status == "pass"}
    assert passed == {
        "preflight/imports",
        "preflight/device",
        "e2e/corpus",
        "e2e/train-bf16-mixed-sigterm",
        "e2e/train-bf16-mixed-resume",
        "e2e/predict",
        "e2e/evaluate",
        "e2e/export-hf",
        "e2e/export-onnx",
        "train-large/benchmark",
        "predict/benchmark",
    }, steps
    skipped = {name: detail for status, name, detail in steps if status == "skip"}
    assert set(skipped) == {"preflight/compile", "e2e/train-16-mixed", "train-large/compile", "train-base/benchmark"}
    assert all(detail.startswith("skipped on CPU (") for detail in skipped.values()), skipped

    assert sorted(p.name for p in out.iterdir()) == ["BENCHMARKS.md", "gpu-check.tar.gz", "gpu.log", "summary.txt"]
    section = re.split(r"^## ", (out / "BENCHMARKS.md").read_text(), flags=re.M)[-1]
    assert section.startswith("gpu\n") and "Measured " in section and "GPU: none" in section
    number = r"\d+(\.\d+)?"
    # the facts the section gives of the device: its name, torch's and CUDA's versions
    assert re.search(rf"torch {number}\S*; CUDA \(torch\) \S+; device CPU \(--cpu\)\.", section), section[:1000]
    for status, name, _ in steps:
        assert f"| {name} | {status} |" in section, name
    assert re.search(rf"\| e2e/train-bf16-mixed-resume \| pass \| {number} \| val/loss {number}", section)
    assert re.search(rf"\| e2e/export-onnx \| pass \| {number} \| CPU provider, probabilities within ", section)
    cells = row(section, "model FLOPs utilisation (MFU)")
    # ser, the recipe, ser in bf16-mixed (the compile side is left out on a CPU)
    assert len(cells) == 3 and all(re.fullmatch(r"\d+(\.\d+)?%", cell) for cell in cells), cells
    assert len(row(section, "SDPA kernel in one step")) == 3
    assert "### predict, tiny (--cpu)" in section
    assert re.search(rf"\| ser predict \| {number} \| {number}x \|", section)
    log = (out / "gpu.log").read_text()
    assert "trainer.precision=bf16-mixed" in log and "trainer.accumulate_grad_batches=2" in log
    assert (REPO / "BENCHMARKS.md").read_text() == benchmarks_md  # --cpu writes to its folder only


@pytest.fixture
def train_benchmark(monkeypatch):
    """benchmarks/train.py as a module (its own imports find benchmarks/report.py)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("benchmark_train", REPO / "benchmarks" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_counted_at_three_lengths_give_those_of_every_length(train_benchmark):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from .helpers import TINY_ENCODER

    torch.manual_seed(0)
    # layerdrop off: a layer skipped at random would change a step's FLOPs
    encoder = {k: v for k, v in TINY_ENCODER.items() if k != "model_type"}
    config = Wav2Vec2Config(**encoder, layerdrop=0.0, num_labels=8)
    model = Wav2Vec2ForSequenceClassification(config)

    def step(waveforms, attention_mask, labels):
        model(input_values=waveforms, attention_mask=attention_mask.long(), labels=labels).loss.backward()

    shapes = [(2, 8_000), (3, 12_000), (2, 16_000), (1, 10_000)]  # 10 000 is not one of the three counted
    result = train_benchmark.count_flops(step, shapes, "cpu", "32-true", model.wav2vec2)
    assert result["flops_counted_at"] == [8_000, 12_000, 16_000]

    exact = 0
    for clips, length in shapes:
        counter = FlopCounterMode(display=False)
        with counter:
            step(torch.randn(clips, length), torch.ones(clips, length, dtype=torch.bool), torch.zeros(clips).long())
        exact += counter.get_total_flops()
    assert result["model_flops"] == pytest.approx(exact, rel=1e-3)
    assert result["sdpa_kernels"].split(" (")[0] in ("flash", "memory-efficient", "cuDNN", "math")


def test_peak_tflops_by_device_name(train_benchmark, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, peak in [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("Tesla T4", None),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda _=0, name=name: name)
        assert train_benchmark.peak_tflops(None)[0] == peak, name
    assert train_benchmark.peak_tflops(400.0) == (400.0, "400 TFLOP/s, given with --peak-tflops")

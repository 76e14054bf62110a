"""Shared by the benchmark scripts: describe the machine, and replace one section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure here was printed by a script in `benchmarks/`; each section names the machine it ran on.\n"
    "Rerun a script to replace its section.\n"
)


def machine() -> str:
    """CPU model, cores, GPU if any, and the library versions that matter for speed."""
    import torch
    import torchaudio
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores usable, GPU: {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, transformers {transformers.__version__}"
    )


def write_section(name: str, body: str) -> Path:
    """Replace (or append) the section ``## name`` of BENCHMARKS.md, atomically."""
    from ser.io import write_text

    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.is_file() else HEADER
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"## {name}\n\nMeasured {stamp} on: {machine()}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    return write_text(BENCHMARKS_MD, text)

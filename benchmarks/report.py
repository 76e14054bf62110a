"""Shared by the benchmark scripts: the machine's description, sections of BENCHMARKS.md, and the
encoder sizes the training and prediction benchmarks run at."""

from __future__ import annotations

import importlib
import os
import platform
import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure here was printed by a script in `benchmarks/`; each section names the machine it ran on.\n"
    "Rerun a script to replace its section.\n"
)
# Libraries whose versions decide the speed of a training or prediction run; absent ones are left out.
LIBRARIES = ("torch", "torchaudio", "transformers", "pytorch_lightning", "datasets", "accelerate", "onnxruntime")

# Encoders built from a config with random weights (nothing downloaded), for `--encoder-config`:
# tiny is the demo's (conf/model/tiny.yaml, used as it is), base has wav2vec2-base's sizes (a group-norm
# feature encoder) and large XLSR-53's (layer norm). layerdrop is off in both, so that every step
# runs every layer and step times compare. Their feature encoder is frozen, as in the recipe.
ENCODER_CONFIGS = {
    "tiny": None,
    "base": {
        "model_type": "wav2vec2",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "conv_dim": [512] * 7,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
        "layerdrop": 0.0,
        "mask_time_prob": 0.05,
    },
    "large": {
        "model_type": "wav2vec2",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "conv_dim": [512] * 7,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "conv_bias": True,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "layerdrop": 0.0,
        "mask_time_prob": 0.05,
    },
}


def use_encoder(cfg, name: str) -> None:
    """Give a config composed with ``model=tiny`` the encoder ``name`` of :data:`ENCODER_CONFIGS` (in place)."""
    from omegaconf import open_dict

    if name not in ENCODER_CONFIGS:
        raise SystemExit(f"error: --encoder-config {name} is unknown; choose one of {', '.join(ENCODER_CONFIGS)}")
    if ENCODER_CONFIGS[name] is None:
        return
    with open_dict(cfg):
        cfg.model.encoder_config = ENCODER_CONFIGS[name]
        cfg.model.projector_dim = 256
        cfg.model.freeze_feature_encoder = True


def _version(name: str) -> str | None:
    try:
        return importlib.import_module(name).__version__
    except ImportError:
        return None


def machine() -> str:
    """CPU model, cores, GPU if any, and the library versions that matter for speed."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    versions = ", ".join(f"{name} {version}" for name in LIBRARIES if (version := _version(name)) is not None)
    cores = len(os.sched_getaffinity(0))
    return f"{cpu}, {cores} cores usable, GPU: {gpu}; Python {platform.python_version()}, {versions}"


def command_line(script: str) -> str:
    """The command that ran ``benchmarks/<script>``, as it can be typed again (``--output`` left out)."""
    given = sys.argv[1:]
    if "--output" in given:
        at = given.index("--output")
        given = given[:at] + given[at + 2 :]
    return shlex.join(["python", f"benchmarks/{script}", *given])


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Replace (or append) the section ``## name`` of the benchmarks file ``path``, atomically."""

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return replace_section(name, f"Measured {stamp} on: {machine()}\n\n{body.strip()}", path)


def replace_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Replace (or append) the section ``## name`` of the benchmarks file ``path`` with ``body`` as it is, atomically.

    For a section measured elsewhere (the GPU check's), whose ``Measured`` line names that machine.
    """
    from ser.atomic import write_text

    path = Path(path)
    text = path.read_text() if path.is_file() else HEADER
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    return write_text(path, text)

"""Speech emotion recognition: fine-tune self-supervised speech encoders on RAVDESS.

    from ser import SERModule, load_model, predict

    for p in predict("outputs/.../checkpoints/best.ckpt", ["clips/"]):
        print(p.path, p.label, p.probability)

The names below are imported on first use, so ``import ser`` (and the ``ser`` command) stays fast:
torch and transformers load only when a model is needed.
"""

from __future__ import annotations

import importlib

# public name -> the submodule defining it
_EXPORTS = {
    "predict": "inference",
    "load_model": "inference",
    "Prediction": "inference",
    "Scorer": "scoring",
    "SERModule": "module",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

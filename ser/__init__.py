"""Speech emotion recognition: fine-tune self-supervised speech encoders on RAVDESS.

    from ser import SERModule, load_model, predict

    for p in predict("outputs/.../checkpoints/best.ckpt", ["clips/"]):
        print(p.path, p.label, p.probability)

The names below are imported on first use, so ``import ser`` (and the ``ser`` command) stays fast:
torch and transformers load only when a model is needed.
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> the submodule defining it
_EXPORTS = {
    "predict": "predict",
    "load_model": "predict",
    "Prediction": "predict",
    "SERModule": "module",
}
# Public names that are also submodule names: ``ser.predict`` is the function, whether or not the
# submodule ``ser.predict`` has been imported (``from ser.predict import ...`` still reaches the module).
_SHADOWED = {name for name, module in _EXPORTS.items() if name == module}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        setattr(sys.modules[__name__], name, value)  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing a submodule binds it on its package (``ser.predict = <module>``); for a shadowed
        # name bind the function of that name instead, so the answer never depends on import order.
        if name in _SHADOWED and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

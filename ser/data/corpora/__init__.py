"""Emotion corpora as plug-ins: the built-in ones by name, and your own data three ways.

``get_corpus(name, root, **settings)`` gives the plug-in for ``data=<name>``; :mod:`.base` says what a
plug-in provides, and :mod:`.stand_ins` writes offline stand-ins of the built-in corpora in their real layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    UNKNOWN_SPEAKER,
    Clip,
    Corpus,
    CorpusSetupError,
    CorpusTree,
    Listing,
    Origin,
    Problem,
    Protocol,
    clip_audio,
    cut_clip,
)
from .cremad import CremaD
from .emodb import EmoDB
from .folders import Folders
from .hf import HuggingFace
from .iemocap import Iemocap
from .manifest import Manifest
from .ravdess import Ravdess
from .savee import Savee
from .tess import Tess

CORPORA: dict[str, type[Corpus]] = {
    cls.name: cls for cls in (Ravdess, CremaD, Tess, Savee, EmoDB, Iemocap, Manifest, Folders, HuggingFace)
}


class UnknownCorpusError(CorpusSetupError):
    """``data=<name>`` names no corpus plug-in."""


def get_corpus(name: str, root: str | Path, **settings: Any) -> Corpus:
    """The plug-in ``name`` for the corpus at ``root``; ``settings`` are the plug-in's own options."""
    try:
        cls = CORPORA[name]
    except KeyError:
        raise UnknownCorpusError(f"no corpus named {name!r}; choose one of {', '.join(CORPORA)}") from None
    return cls(root, **settings)


__all__ = [
    "CORPORA",
    "UNKNOWN_SPEAKER",
    "Clip",
    "Corpus",
    "CorpusSetupError",
    "CorpusTree",
    "Listing",
    "Origin",
    "Problem",
    "Protocol",
    "UnknownCorpusError",
    "clip_audio",
    "cut_clip",
    "get_corpus",
]

"""Train / validation / test splits of a prepared corpus, and their manifest.

- ``random``: stratified by emotion, ``test_size`` of the clips held out, and that held-out part
  serves as validation too. This is how the published model's recipe split RAVDESS (its card's
  accuracy of 0.8223 comes from such a split): every actor and sentence is on both sides.
- ``speaker``: actor-disjoint train / validation / test, each side balanced by gender.
- ``fold``: EmoBox's speaker-independent protocol, ``fold`` in 1..6 names the four test actors;
  validation actors are drawn from the remaining ones, balanced by gender.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from ..errors import UserError
from .ravdess import EMOBOX_FOLDS

SPLITS = ("random", "speaker", "fold")
STAGES = ("train", "val", "test")


class SplitError(UserError, ValueError):
    """A split that cannot be made from this corpus; the message says what to change."""


def _pick_actors(actors: Sequence[int], count: int, rng: np.random.Generator) -> list[int]:
    """``count`` actors, as many male (odd) as female (even), alternating when ``count`` is odd."""
    males = list(rng.permutation([a for a in actors if a % 2]))
    females = list(rng.permutation([a for a in actors if a % 2 == 0]))
    first, second = (males, females) if rng.random() < 0.5 else (females, males)
    picked = []
    while len(picked) < count and (first or second):
        for group in (first, second):
            if group and len(picked) < count:
                picked.append(int(group.pop(0)))
    return picked


def make_split(
    clips: Sequence[Mapping],
    split: str = "random",
    seed: int = 42,
    fold: int | None = None,
    test_size: float = 0.2,
    val_actors: int = 2,
    test_actors: int = 4,
) -> dict[str, np.ndarray]:
    """Clip indices for each stage; deterministic for a given ``seed``.

    Returns:
        ``{"train": (N_train,), "val": (N_val,), "test": (N_test,)}`` int64 index arrays, each sorted.
    """
    actors = np.array([clip["actor"] for clip in clips])
    all_indices = np.arange(len(clips))
    if split == "random":
        labels = np.array([clip["label"] for clip in clips])
        try:
            # scikit-learn's, as the recipe split; imported here, since it takes half a second (scipy)
            # that a speaker or fold split need not wait for at the start of training
            from sklearn.model_selection import train_test_split

            train, test = train_test_split(all_indices, test_size=test_size, random_state=seed, stratify=labels)
        except ValueError as error:
            raise SplitError(f"cannot stratify {len(clips)} clips by emotion ({error}); use a larger corpus") from None
        return {"train": np.sort(train), "val": np.sort(test), "test": np.sort(test)}

    rng = np.random.default_rng(seed)
    present = sorted(set(actors.tolist()))
    if split == "speaker":
        if len(present) < test_actors + val_actors + 1:
            raise SplitError(
                f"data.split=speaker needs more than {test_actors + val_actors} actors and the corpus has "
                f"{len(present)}; lower data.test_actors / data.val_actors"
            )
        test = _pick_actors(present, test_actors, rng)
    elif split == "fold":
        if fold not in EMOBOX_FOLDS:
            raise SplitError(f"data.fold={fold} is out of range; EmoBox's RAVDESS protocol has folds 1 to 6")
        test = [a for a in EMOBOX_FOLDS[fold] if a in present]
        if not test:
            raise SplitError(f"none of fold {fold}'s test actors {list(EMOBOX_FOLDS[fold])} is in the corpus")
        if len(present) - len(test) < val_actors + 1:
            raise SplitError(
                f"fold {fold} leaves too few training actors for {val_actors} validation actors; lower data.val_actors"
            )
    else:
        raise SplitError(f"data.split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
    val = _pick_actors([a for a in present if a not in test], val_actors, rng)
    return {
        "train": all_indices[~np.isin(actors, test + val)],
        "val": all_indices[np.isin(actors, val)],
        "test": all_indices[np.isin(actors, test)],
    }


def describe_protocol(data: Any) -> str:
    """Say which evaluation protocol a number comes from; it is stored next to every metric.

    ``data``: the data config (``split``, ``test_size``, ``fold``, ``test_actors``, ``val_actors``).
    """
    if data.split == "random":
        held_out = data.test_size
        return f"random stratified {1 - held_out:.0%}/{held_out:.0%} split (speakers shared between train and test)"
    if data.split == "fold":
        return f"EmoBox speaker-independent fold {data.fold} of 6"
    return f"speaker-independent split ({data.test_actors} test actors, {data.val_actors} validation actors)"


def write_manifest(path: str | Path, clips: Sequence[Mapping], split: Mapping[str, np.ndarray]) -> Path:
    """Write the split as CSV (one row per clip and stage) atomically; returns the path."""
    path = Path(path)
    buffer = io.StringIO()
    columns = ["stage", "key", "emotion", "actor", "gender", "intensity", "statement", "repetition"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for stage in STAGES:
        for index in split[stage]:
            writer.writerow({"stage": stage, **clips[int(index)]})
    return write_text(path, buffer.getvalue())

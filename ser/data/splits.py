"""Train / validation / test splits of a prepared corpus, and their manifest.

- ``random``: stratified by emotion, ``test_size`` of the clips held out, and that held-out part
  serves as validation too. This is how the published model's recipe split RAVDESS (its card's
  accuracy of 0.8223 comes from such a split): every actor and sentence is on both sides.
- ``speaker``: actor-disjoint train / validation / test, each side balanced by gender.
- ``fold``: EmoBox's speaker-independent protocol, ``fold`` in 1..6 names the four test actors;
  validation actors are drawn from the remaining ones, balanced by gender.

Other corpora (``protocol=``, a :class:`ser.data.corpora.Protocol`) split the same ways over their
speakers: ``fold`` tests on the groups (speakers, or IEMOCAP's sessions) that the corpus's standard
protocol holds out in that fold, or on the clips its own fold files mark ``test`` (``test_keys``).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import write_text
from ..errors import UserError
from .ravdess import EMOBOX_FOLDS

if TYPE_CHECKING:
    from .corpora import Protocol

log = logging.getLogger(__name__)

SPLITS = ("random", "speaker", "fold")
STAGES = ("train", "val", "test")


class SplitError(UserError, ValueError):
    """A split that cannot be made from this corpus; the message says what to change."""


def _pick_actors(actors: Sequence, count: int, rng: np.random.Generator, male: Mapping | None = None) -> list:
    """``count`` actors, as many male as not, alternating when ``count`` is odd.

    ``male``: actor -> whether male; None for RAVDESS's numbers, where odd actors are male.
    """
    is_male = (lambda a: bool(a % 2)) if male is None else male.__getitem__
    males = [a for a in actors if is_male(a)]
    others = [a for a in actors if not is_male(a)]
    if male is None:
        males, others = list(rng.permutation(males)), list(rng.permutation(others))
    else:  # speaker names are strings: permute their positions, as permuting them would give numpy strings
        males = [males[i] for i in rng.permutation(len(males))]
        others = [others[i] for i in rng.permutation(len(others))]
    first, second = (males, others) if rng.random() < 0.5 else (others, males)
    picked = []
    while len(picked) < count and (first or second):
        for group in (first, second):
            if group and len(picked) < count:
                value = group.pop(0)
                picked.append(int(value) if male is None else value)
    return picked


def make_split(
    clips: Sequence[Mapping],
    split: str = "random",
    seed: int = 42,
    fold: int | None = None,
    test_size: float = 0.2,
    val_actors: int = 2,
    test_actors: int = 4,
    protocol: Protocol | None = None,
    test_keys: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Clip indices for each stage; deterministic for a given ``seed``.

    ``protocol``: the corpus's standard protocol (None: RAVDESS's actors and EmoBox folds).
    ``test_keys``: with ``split=fold``, the clips a corpus's own fold files test on (EmoBox's folders).

    Returns:
        ``{"train": (N_train,), "val": (N_val,), "test": (N_test,)}`` int64 index arrays, each sorted.
    """
    if protocol is not None or test_keys is not None or (clips and "actor" not in clips[0]):
        return _make_corpus_split(clips, split, seed, fold, test_size, val_actors, test_actors, protocol, test_keys)
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


def _random_split(
    clips: Sequence[Mapping], test_size: float, seed: int, stratify: bool = True
) -> dict[str, np.ndarray]:
    labels = np.array([clip["label"] for clip in clips])
    if (
        stratify is False
        and min(np.unique(labels, return_counts=True)[1]) >= 2
        and len(clips) * test_size >= len(set(labels.tolist()))
    ):
        stratify = True  # every class has clips enough on both sides
    try:
        # scikit-learn's, as the recipe split; imported here, since it takes half a second (scipy)
        # that a speaker or fold split need not wait for at the start of training
        from sklearn.model_selection import train_test_split

        train, test = train_test_split(
            np.arange(len(clips)), test_size=test_size, random_state=seed, stratify=labels if stratify else None
        )
    except ValueError as error:
        raise SplitError(f"cannot stratify {len(clips)} clips by emotion ({error}); use a larger corpus") from None
    return {"train": np.sort(train), "val": np.sort(test), "test": np.sort(test)}


def _make_corpus_split(
    clips: Sequence[Mapping],
    split: str,
    seed: int,
    fold: int | None,
    test_size: float,
    val_actors: int,
    test_actors: int,
    protocol: Protocol | None,
    test_keys: Sequence[str] | None,
) -> dict[str, np.ndarray]:
    """``make_split`` over the ``speaker`` fields of any corpus's clips, and its protocol's folds."""
    if split == "random":
        return _random_split(clips, test_size, seed)
    from .prepare import speaker_of

    speakers = np.array([speaker_of(clip) for clip in clips], dtype=object)
    male = {speaker_of(clip): clip.get("gender") == "male" for clip in clips}
    present = sorted(male)
    rng = np.random.default_rng(seed)
    stage_given = False
    if split == "speaker":
        if len(present) < test_actors + val_actors + 1:
            raise SplitError(
                f"data.split=speaker needs more than {test_actors + val_actors} speakers and the corpus has "
                f"{len(present)}; lower data.test_actors / data.val_actors"
            )
        is_test = np.isin(speakers, _pick_actors(present, test_actors, rng, male))
    elif split == "fold":
        stage_given = test_keys is None and any(clip.get("stage") == "test" for clip in clips)
        if stage_given:  # the corpus's own split: a manifest's split column, a dataset's or folder's splits
            is_test = np.array([clip.get("stage") == "test" for clip in clips], dtype=bool)
            where = "the corpus's own test split"
        elif test_keys is not None:
            wanted = set(test_keys)
            is_test = np.array([clip["key"] in wanted for clip in clips], dtype=bool)
            where = f"fold {fold}'s test file"
        elif protocol is not None:
            groups = protocol.test_groups(fold)
            field = "speaker" if protocol.group == "speaker" else protocol.group
            values = [speaker_of(clip) if field == "speaker" else str(clip.get(field)) for clip in clips]
            is_test = np.isin(np.array(values, dtype=object), list(groups))
            where = f"fold {fold}'s test {field}s {list(groups)}"
        else:
            raise SplitError("this corpus has no folds (fewer than two speakers); use data.split=random")
        if not is_test.any():
            raise SplitError(f"no clip of {where} is in the corpus; choose another data.fold")
    else:
        raise SplitError(f"data.split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
    all_indices = np.arange(len(clips))
    if split == "fold" and stage_given:
        is_val = np.array([clip.get("stage") == "val" for clip in clips], dtype=bool) & ~is_test
        if is_val.any():
            return {"train": all_indices[~is_test & ~is_val], "val": all_indices[is_val], "test": all_indices[is_test]}
    remaining = sorted(set(speakers[~is_test].tolist()))
    if len(remaining) >= val_actors + 1 and val_actors > 0:
        is_val = np.isin(speakers, _pick_actors(remaining, val_actors, rng, male)) & ~is_test
    else:
        # Too few speakers outside the test part (TESS's two, a stand-in's few) to hold any out for validation:
        # validation is a stratified part of the training clips instead, which the test part still excludes.
        rest = all_indices[~is_test]
        if len(rest) < 2:
            raise SplitError(f"{len(rest)} clip(s) outside the test part: too few to train on; use a larger corpus")
        log.warning(
            "%d speaker(s) outside the test part: validation is %.0f%% of their clips, not held-out speakers",
            len(remaining),
            100 * test_size,
        )
        held = _random_split([clips[int(i)] for i in rest], test_size, seed, stratify=False)["test"]
        is_val = np.isin(all_indices, rest[held])
    return {"train": all_indices[~is_test & ~is_val], "val": all_indices[is_val], "test": all_indices[is_test]}


def describe_protocol(data: Any, protocol: Protocol | None = None) -> str:
    """Say which evaluation protocol a number comes from; it is stored next to every metric.

    ``data``: the data config (``corpus``, ``split``, ``test_size``, ``fold``, ``test_actors``, ``val_actors``);
    ``protocol``: the corpus's standard protocol, for a corpus other than RAVDESS.
    """
    corpus = getattr(data, "corpus", None) or "ravdess"
    prefix = "" if corpus == "ravdess" else f"{corpus}: "
    if data.split == "random":
        held_out = data.test_size
        return (
            f"{prefix}random stratified {1 - held_out:.0%}/{held_out:.0%} split "
            "(speakers shared between train and test)"
        )
    if data.split == "fold":
        if corpus == "ravdess" and protocol is None:
            return f"EmoBox speaker-independent fold {data.fold} of 6"
        if protocol is not None:
            return f"{prefix}{protocol.name}, fold {data.fold} of {len(protocol.folds)} (speaker-independent)"
        return f"{prefix}the corpus's own fold {data.fold} (its fold files)"
    return (
        f"{prefix}speaker-independent split ({data.test_actors} test speakers, {data.val_actors} validation speakers)"
        if prefix
        else f"speaker-independent split ({data.test_actors} test actors, {data.val_actors} validation actors)"
    )


def write_manifest(path: str | Path, clips: Sequence[Mapping], split: Mapping[str, np.ndarray]) -> Path:
    """Write the split as CSV (one row per clip and stage) atomically; returns the path."""
    path = Path(path)
    buffer = io.StringIO()
    columns = ["stage", "key", "emotion", "actor", "gender", "intensity", "statement", "repetition"]
    if clips and "actor" not in clips[0]:  # another corpus: its speaker and metadata
        skip = {"offset", "length", "label", "emotion", "key", "speaker", "gender"}
        extra = sorted({name for clip in clips for name in clip} - skip)
        columns = ["stage", "key", "emotion", "speaker", "gender", *extra]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for stage in STAGES:
        for index in split[stage]:
            writer.writerow({"stage": stage, **clips[int(index)]})
    return write_text(path, buffer.getvalue())

"""Your own data as a manifest: EmoBox's JSONL (with its ``label_map.json``), an EmoBox dataset folder, or a CSV.

- EmoBox JSONL: one object per line with ``key``, ``dataset``, ``wav``, ``type``, ``sample_rate``,
  ``num_frame``, ``task``, ``length``, ``emo``, ``channel`` and optionally ``start_time``/``end_time`` (seconds)
  of a clip inside a longer file. ``emo`` is the corpus's own label; the ``label_map.json`` beside the
  manifest maps it to EmoBox's name (``Fear``), which is then written in this project's shared names
  (``fearful``), so that manifests and built-in corpora share their labels.
- An EmoBox dataset folder, ``data/<corpus>/`` holding ``<corpus>.jsonl``, ``label_map.json`` and
  ``fold_<k>/<corpus>_{train,test}_fold_<k>.jsonl``: the folds are used as they are.
- CSV: a header with ``path`` and ``label``, optionally ``speaker``, ``split`` (train/val/test), ``start``
  and ``end`` (seconds).

Relative paths resolve against the manifest's folder, or against ``audio_root`` when it is set (EmoBox
writes paths relative to its own checkout, ``downloads/<corpus>/...``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..ravdess import parse_name
from . import cremad, emodb, iemocap, savee, tess
from .base import UNKNOWN_SPEAKER, Clip, Corpus, CorpusSetupError, Origin, Problem, drop_duplicate_keys, stem_of

# EmoBox's label names in this project's shared ones.
EMOBOX_NAMES: dict[str, str] = {
    "Angry": "angry",
    "Boredom": "bored",
    "Calm": "calm",
    "Disgust": "disgust",
    "Fear": "fearful",
    "Happy": "happy",
    "Neutral": "neutral",
    "Sad": "sad",
    "Surprise": "surprised",
}
_STAGES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def _speaker_from_name(dataset: str, path: str) -> str | None:
    """The speaker of an EmoBox entry of a corpus whose file names say it, else None."""
    stem = stem_of(path)
    try:
        if dataset == "ravdess":
            return f"{parse_name(stem).actor:02d}"
        if dataset == "cremad":
            return stem.split("_")[0] if int(stem.split("_")[0]) in cremad.ACTORS else None
        if dataset == "tess":
            return stem.split("_")[0].upper() if stem.split("_")[0].upper() in tess.SPEAKERS else None
        if dataset == "savee":
            speaker = stem.split("_")[0] if "_" in stem else path.replace("\\", "/").split("/")[-2]
            return speaker if speaker in savee.SPEAKERS else None
        if dataset == "emodb":
            return stem[:2] if stem[:2] in emodb.SPEAKERS else None
        if dataset == "iemocap":
            return iemocap.speaker_of(stem)
    except (ValueError, IndexError):
        return None
    return None


def _seconds(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


class Manifest(Corpus):
    """A JSONL or CSV manifest, or an EmoBox dataset folder (``data.root``)."""

    name = "manifest"
    title = "manifest"
    origin = Origin(message="point data.root at an EmoBox .jsonl, an EmoBox dataset folder or a path,label CSV")

    def __init__(self, root: str | Path, audio_root: str | Path | None = None, **settings: Any):
        super().__init__(root, **settings)
        if self.root.is_dir():
            self.folder: Path | None = self.root
            self.file = self.root / f"{self.root.name}.jsonl"
            if not self.file.is_file():
                raise CorpusSetupError(
                    f"{self.root} holds no {self.root.name}.jsonl; point data.root at an EmoBox dataset folder "
                    "or a manifest"
                )
        elif self.root.is_file():
            self.folder, self.file = None, self.root
        else:
            raise CorpusSetupError(f"no manifest at {self.root}; {self.origin.message}")
        self.base = Path(audio_root).expanduser() if audio_root else self.file.parent
        self.emobox_map: dict[str, str] | None = self._label_map_file()
        if self.emobox_map is not None:
            self.label_names = tuple(self.emobox_map)
            self.label_map = {raw: EMOBOX_NAMES.get(name, name) for raw, name in self.emobox_map.items()}
            # The map, not the clips present, fixes the classes: a fold without some class keeps its order.
            self.default_labels = tuple(sorted(set(self.label_map.values())))
        self.notes_: list[str] = []

    @property
    def description(self) -> str:
        return f"manifest {self.file}"

    def _label_map_file(self) -> dict[str, str] | None:
        path = self.file.parent / "label_map.json"
        if not path.is_file():
            return None
        try:
            mapping = json.loads(path.read_text())
        except ValueError as error:
            raise CorpusSetupError(f"{path} is not valid JSON ({error}); fix or remove it") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise CorpusSetupError(f"{path} is not a JSON object of label -> label; fix or remove it")
        return mapping

    def _resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else self.base / candidate

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        self.notes_ = []
        text = self.file.read_text(encoding="utf-8", errors="replace")
        if self.file.suffix.lower() == ".csv":
            clips, problems = self._scan_csv(text)
        else:
            clips, problems = self._scan_jsonl(text)
        clips = drop_duplicate_keys(clips, problems)
        present = []
        for clip in clips:
            if Path(clip.location).is_file():
                present.append(clip)
            else:
                problems.append(Problem(clip.key, clip.location, "missing file"))
        return present, problems

    def _label(self, raw: str) -> str:
        """EmoBox's own files spell some keys of ``label_map.json`` in another case (EmoDB's ``Neutral``)."""
        if self.emobox_map is None or raw in self.emobox_map:
            return raw
        folded = {key.lower(): key for key in self.emobox_map}
        return folded.get(raw.lower(), raw)

    def _scan_jsonl(self, text: str) -> tuple[list[Clip], list[Problem]]:
        clips, problems, unknown_speakers = [], [], 0
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{self.file}:{number}"
            try:
                row = json.loads(line)
            except ValueError:
                problems.append(Problem(f"line {number}", where, "not a JSON object"))
                continue
            if not isinstance(row, dict) or not row.get("wav"):
                problems.append(
                    Problem(
                        str(row.get("key", f"line {number}")) if isinstance(row, dict) else f"line {number}",
                        where,
                        "no wav path",
                    )
                )
                continue
            key = str(row.get("key") or row["wav"])
            speaker = (
                row.get("speaker") or row.get("spk") or _speaker_from_name(str(row.get("dataset", "")), row["wav"])
            )
            if speaker is None:
                unknown_speakers += 1
                speaker = UNKNOWN_SPEAKER
            try:
                start, end = _seconds(row.get("start_time")), _seconds(row.get("end_time"))
            except (TypeError, ValueError):
                problems.append(Problem(key, where, "start_time/end_time are not numbers"))
                continue
            meta = {"dataset": row.get("dataset", ""), "line": number}
            label = self._label(str(row.get("emo") or ""))
            clips.append(Clip(key, str(self._resolve(row["wav"])), label, str(speaker), start, end, meta=meta))
        if unknown_speakers:
            self.notes_.append(f"{unknown_speakers} entries name no speaker: speaker splits see them as one")
        return clips, problems

    def _scan_csv(self, text: str) -> tuple[list[Clip], list[Problem]]:
        reader = csv.DictReader(io.StringIO(text))
        columns = {c.strip().lower() for c in reader.fieldnames or []}
        if not {"path", "label"} <= columns:
            raise CorpusSetupError(f"{self.file} needs a header with path and label columns; it has {sorted(columns)}")
        clips, problems = [], []
        for number, row in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            where = f"{self.file}:{number}"
            if not row.get("path"):
                problems.append(Problem(f"line {number}", where, "no path"))
                continue
            stage = row.get("split") or None
            if stage is not None and stage.lower() not in _STAGES:
                problems.append(Problem(row["path"], where, f"split {stage!r} is not train, val or test"))
                continue
            try:
                start, end = _seconds(row.get("start")), _seconds(row.get("end"))
            except ValueError:
                problems.append(Problem(row["path"], where, "start/end are not numbers"))
                continue
            # Segments of one long file are clips of their own: their key names the segment.
            key = row["path"] if start is None and end is None else f"{row['path']}@{row.get('start')}-{row.get('end')}"
            clips.append(
                Clip(
                    key,
                    str(self._resolve(row["path"])),
                    row.get("label", ""),
                    row.get("speaker") or UNKNOWN_SPEAKER,
                    start,
                    end,
                    _STAGES[stage.lower()] if stage else None,
                    meta={"line": number},
                )
            )
        return clips, problems

    def notes(self, clips) -> list[str]:
        return list(self.notes_)

    def read(self, clip: Clip) -> bytes:
        return Path(clip.location).read_bytes()

    def fingerprint(self) -> list:
        clips, _ = self.scan()
        files = []
        for clip in clips:
            stat = Path(clip.location).stat()
            files.append((clip.location, stat.st_size, stat.st_mtime_ns))
        digest = hashlib.sha256(self.file.read_bytes()).hexdigest()
        label_map = self.file.parent / "label_map.json"
        extra = label_map.read_text() if label_map.is_file() else ""
        return [self.name, str(self.file.resolve()), digest, extra, sorted(set(files))]

    def fold_stages(self, fold: int) -> Mapping[str, str] | None:
        if self.folder is None:
            return None
        name = self.folder.name
        files = {
            stage: self.folder / f"fold_{fold}" / f"{name}_{stage}_fold_{fold}.jsonl" for stage in ("train", "test")
        }
        if not all(path.is_file() for path in files.values()):
            folds = sorted(p.name for p in self.folder.glob("fold_*") if p.is_dir())
            raise CorpusSetupError(
                f"{self.folder} has no fold {fold} ({files['test'].name}); its folds: {', '.join(folds) or 'none'}"
            )
        stages = {}
        for stage, path in files.items():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    stages[str(row.get("key") or row["wav"])] = stage
        return stages

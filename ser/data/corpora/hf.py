"""A Hugging Face ``datasets`` dataset, by Hub name or from ``save_to_disk``, with an audio and a label column.

The column names are settings, as in transformers' ``run_audio_classification.py``
(``audio_column_name``, ``label_column_name``). The audio is read from the dataset's Arrow storage
(``{"bytes", "path"}``, a path, or ``{"array", "sampling_rate"}``) without ``datasets``' own decoding,
which needs torchcodec, and then goes through :func:`ser.data.audio.decode` like every corpus's files.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .base import UNKNOWN_SPEAKER, Clip, Corpus, CorpusSetupError, Origin, Problem, drop_duplicate_keys

_STAGES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


class HuggingFace(Corpus):
    """``data.root``: a ``save_to_disk`` folder or a Hub name; every split, or ``split`` only."""

    name = "hf"
    title = "datasets dataset"
    origin = Origin(message="point data.root at a datasets.save_to_disk folder or a Hub dataset name")

    def __init__(
        self,
        root: str | Path,
        audio_column: str = "audio",
        label_column: str = "label",
        speaker_column: str | None = None,
        split: str | None = None,
        config: str | None = None,
        **settings: Any,
    ):
        super().__init__(root, **settings)
        self.source = str(root)
        self.audio_column, self.label_column = audio_column, label_column
        self.speaker_column, self.split, self.config = speaker_column, split, config
        self._splits: dict[str, Any] | None = None

    @property
    def description(self) -> str:
        return f"dataset {self.source}"

    def splits(self) -> dict[str, Any]:
        """Split name -> ``datasets.Dataset``."""
        if self._splits is None:
            import datasets

            try:
                if Path(self.source).expanduser().exists():
                    loaded = datasets.load_from_disk(str(Path(self.source).expanduser()))
                else:
                    loaded = datasets.load_dataset(self.source, self.config)
            except Exception as error:  # datasets raises many types; the user needs the first line only
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise CorpusSetupError(
                    f"cannot load dataset {self.source} ({message}); {self.origin.message}"
                ) from None
            found = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
            if self.split is not None:
                if self.split not in found:
                    raise CorpusSetupError(
                        f"dataset {self.source} has no split {self.split!r}; it has {', '.join(found)}"
                    )
                found = {self.split: found[self.split]}
            for name, table in found.items():
                missing = [
                    c
                    for c in (self.audio_column, self.label_column, self.speaker_column)
                    if c and c not in table.column_names
                ]
                if missing:
                    raise CorpusSetupError(
                        f"split {name} of {self.source} has no column {', '.join(missing)}; its columns: "
                        f"{', '.join(table.column_names)} (set data.audio_column / data.label_column)"
                    )
            self._splits = found
        return self._splits

    def _label_names(self, table) -> list[str] | None:
        feature = table.features[self.label_column]
        return list(feature.names) if hasattr(feature, "names") else None

    def scan(self) -> tuple[list[Clip], list[Problem]]:
        clips, problems = [], []
        for split, table in self.splits().items():
            names = self._label_names(table)
            labels = table.with_format("arrow")[self.label_column].to_pylist()
            speakers = (
                table.with_format("arrow")[self.speaker_column].to_pylist()
                if self.speaker_column
                else [UNKNOWN_SPEAKER] * len(labels)
            )
            for index, (label, speaker) in enumerate(zip(labels, speakers)):
                key = f"{split}/{index}"
                if label is None or (names is not None and label < 0):
                    problems.append(Problem(key, key, "no label"))
                    continue
                text = names[label] if names is not None and isinstance(label, int) else str(label)
                if names is not None and isinstance(label, int) and not 0 <= label < len(names):
                    problems.append(Problem(key, key, f"label index {label} is outside the {len(names)} class names"))
                    continue
                stage = _STAGES.get(split.lower())
                speaker = UNKNOWN_SPEAKER if speaker in (None, "") else str(speaker)
                clips.append(Clip(key, key, text, speaker, stage=stage, meta={"split": split, "row": index}))
        return drop_duplicate_keys(clips, problems), problems

    def read(self, clip: Clip) -> bytes:
        table = self.splits()[clip.meta["split"]]
        value = table.with_format("arrow")[clip.meta["row"]][self.audio_column].to_pylist()[0]
        if isinstance(value, str):
            return Path(value).read_bytes()
        if not isinstance(value, dict):
            raise OSError(f"audio column holds {type(value).__name__}, not a file, path or array")
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
        if value.get("array") is not None and value.get("sampling_rate"):
            import soundfile as sf

            buffer = io.BytesIO()
            sf.write(
                buffer,
                np.asarray(value["array"], dtype=np.float32),
                int(value["sampling_rate"]),
                format="WAV",
                subtype="FLOAT",
            )
            return buffer.getvalue()
        raise OSError("audio entry holds neither bytes, a path nor an array")

    def fingerprint(self) -> list:
        return [self.name, self.source, self.audio_column, self.label_column, self.speaker_column] + [
            (name, table._fingerprint) for name, table in sorted(self.splits().items())
        ]

"""Corpus plug-ins: name parsing on each stand-in, every kind of bad input, label maps, EmoBox manifests."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser.data.audio import AudioError
from ser.data.corpora import (
    CORPORA,
    CorpusSetupError,
    UnknownCorpusError,
    clip_audio,
    get_corpus,
)
from ser.data.corpora import iemocap as iemocap_module
from ser.data.corpora.cremad import MISSING_FROM_RELEASE, release_stems
from ser.data.corpora.stand_ins import StandInError, stand_in_files, stand_in_speakers, write_stand_in
from ser.data.ravdess import EMOBOX_FOLDS, parse_name
from ser.errors import UserError

from .helpers import write_noise_corpus

STAND_INS = ("cremad", "tess", "savee", "emodb", "iemocap")
RAVDESS_ACTORS = (1, 2, 11, 20, 21, 3)  # fold 1's four test actors and two more


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    """The default stand-in of every corpus but RAVDESS, written once (read only)."""
    root = tmp_path_factory.mktemp("stand_ins")
    return {name: write_stand_in(root / name, name) for name in STAND_INS}


@pytest.fixture
def copy_of(stand_ins, tmp_path):
    """A writable copy of a stand-in, for tests that damage it."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(stand_ins[name], tmp_path / name))

    return copy


def reasons(listing) -> dict[str, str]:
    return {problem.key: problem.reason for problem in listing.problems}


# ---------------------------------------------------------------------------------------------
# The registry and the stand-ins


def test_registry_names_every_plug_in_and_refuses_unknown_names(tmp_path):
    assert set(CORPORA) == {"ravdess", "cremad", "tess", "savee", "emodb", "iemocap", "manifest", "folders", "hf"}
    with pytest.raises(UnknownCorpusError, match="no corpus named 'crema'; choose one of ravdess") as error:
        get_corpus("crema", tmp_path)
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)
    with pytest.raises(CorpusSetupError, match="has no setting"):
        get_corpus("tess", tmp_path, colour="red")


@pytest.mark.parametrize("name", STAND_INS)
def test_stand_in_holds_what_its_plug_in_lists(stand_ins, name):
    utterances, _ = stand_in_files(name)
    listing = get_corpus(name, stand_ins[name]).listing()
    assert listing.problems == []
    assert sorted(listing.summary()["speakers"]) == sorted(stand_in_speakers(name))
    dropped = sum(listing.not_kept.values())
    assert len(listing.clips) + dropped == len(utterances)
    for clip in listing.clips[:3]:
        samples, rate = clip_audio(get_corpus(name, stand_ins[name]), clip)
        assert samples.shape[1] == 1 and len(samples) > rate // 2  # mono, more than half a second


@pytest.mark.parametrize(
    ("name", "rate"), [("cremad", 16_000), ("tess", 24_414), ("savee", 44_100), ("emodb", 16_000), ("iemocap", 16_000)]
)
def test_stand_in_has_the_corpus_format(stand_ins, name, rate):
    utterances, _ = stand_in_files(name)
    info = sf.info(stand_ins[name] / utterances[1].path)
    assert (info.samplerate, info.channels, info.subtype) == (rate, 1, "PCM_16")


def test_stand_in_refuses_a_full_folder_and_impossible_sizes(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(StandInError, match="not an empty folder"):
        write_stand_in(tmp_path / "x", "tess")
    with pytest.raises(StandInError, match="outside 1-2 for tess"):
        stand_in_files("tess", speakers=3)
    with pytest.raises(StandInError, match="choose one of"):
        stand_in_files("crema")


def test_emodb_stand_in_speaks_german():
    utterances, _ = stand_in_files("emodb")
    assert {u.language for u in utterances} == {"de"}
    assert utterances[0].text == "Der Lappen liegt auf dem Eisschrank."


# ---------------------------------------------------------------------------------------------
# Each plug-in's names


def test_ravdess_plug_in_keeps_the_keys_labels_and_folds(noise_corpus):
    (noise_corpus / "Actor_01" / "notes.wav").write_bytes(b"")
    shutil.copy(noise_corpus / "Actor_01" / "03-01-01-01-01-01-01.wav", noise_corpus / "Actor_02")
    corpus = get_corpus("ravdess", noise_corpus)
    listing = corpus.listing()
    assert len(listing.clips) == 4 * 60
    first = listing.clips[0]
    assert first.key == "Actor_01/03-01-01-01-01-01-01.wav" and first.label == "neutral" and first.speaker == "01"
    assert first.meta["gender"] == "male" and first.meta["intensity"] == 1
    assert listing.labels == ("angry", "calm", "disgust", "fearful", "happy", "neutral", "sad", "surprised")
    assert "name outside the RAVDESS scheme" in reasons(listing)["Actor_01/notes.wav"]
    assert "actor 01 in the name but the file is in Actor_02" in reasons(listing)["Actor_02/03-01-01-01-01-01-01.wav"]
    assert corpus.protocol.test_groups(1) == ("01", "11", "20", "21")
    record = listing.record(first)
    assert {k: record[k] for k in ("key", "label", "emotion", "actor", "gender", "statement", "repetition")} == {
        "key": "Actor_01/03-01-01-01-01-01-01.wav",
        "label": 5,
        "emotion": "neutral",
        "actor": 1,
        "gender": "male",
        "statement": 1,
        "repetition": 1,
    }


def test_cremad_names_genders_levels_and_the_release_gaps(stand_ins):
    listing = get_corpus("cremad", stand_ins["cremad"]).listing()
    clip = next(c for c in listing.clips if c.key == "1002_IEO_HAP_LO")
    assert (clip.label, clip.speaker, clip.meta["gender"], clip.meta["intensity"]) == ("happy", "1002", "female", "low")
    assert clip.meta["sentence"] == "It's eleven o'clock"
    assert next(c for c in listing.clips if c.speaker == "1001").meta["gender"] == "male"
    # 1002_TIE_NEU_XX is one of the release's 20 missing clips: a note, not a problem
    assert "1002_TIE_NEU_XX" not in {c.key for c in listing.clips} and listing.problems == []
    assert any("missing from the CREMA-D release" in note for note in listing.notes)
    assert len(MISSING_FROM_RELEASE) == 20 and len(release_stems()) - 20 == 7442


def test_cremad_reads_the_same_from_its_archive(stand_ins, tmp_path):
    archive = tmp_path / "CREMA-D.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(stand_ins["cremad"].rglob("*")):
            if path.is_file():
                zipped.write(path, Path("CREMA-D") / path.relative_to(stand_ins["cremad"]))
    from_dir = get_corpus("cremad", stand_ins["cremad"]).listing()
    from_zip = get_corpus("cremad", archive)
    listing = from_zip.listing()
    assert [(c.key, c.label, c.meta["gender"]) for c in listing.clips] == [
        (c.key, c.label, c.meta["gender"]) for c in from_dir.clips
    ]
    samples, rate = clip_audio(from_zip, listing.clips[0])
    assert rate == 16_000 and len(samples) > 0


def test_tess_folders_keep_their_capitalisation_and_ps_is_surprised(stand_ins):
    folders = {p.name for p in stand_ins["tess"].iterdir()}
    assert {"OAF_Fear", "OAF_Pleasant_surprise", "OAF_Sad", "YAF_pleasant_surprised", "YAF_fear"} <= folders
    corpus = get_corpus("tess", stand_ins["tess"])
    listing = corpus.listing()
    clip = next(c for c in listing.clips if c.key == "YAF_bar_ps")
    assert (clip.label, clip.speaker, clip.meta["original_label"]) == ("surprised", "YAF", "ps")
    high = next(c for c in listing.clips if c.key == "OAF_food_fear")
    assert clip_audio(corpus, high)[1] == 96_000  # the release's one 96 kHz file
    assert corpus.protocol.test_groups(2) == ("YAF",)


def test_savee_tree_and_flat_copy_give_the_same_clips(stand_ins, tmp_path):
    flat = tmp_path / "flat"
    for path in (stand_ins["savee"] / "AudioData").rglob("*.wav"):
        (flat / "ALL").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, flat / "ALL" / f"{path.parent.name}_{path.name}")
    tree = get_corpus("savee", stand_ins["savee"]).listing()
    copy = get_corpus("savee", flat).listing()
    assert [(c.key, c.label, c.speaker) for c in tree.clips] == [(c.key, c.label, c.speaker) for c in copy.clips]
    assert ("DC_sa01", "sad", "DC") in [(c.key, c.label, c.speaker) for c in tree.clips]
    assert get_corpus("savee", flat).protocol.test_groups(1) == ("JE",)


def test_savee_flat_stand_in(tmp_path):
    root = write_stand_in(tmp_path / "savee", "savee", speakers=1, layout="flat")
    assert sorted(p.name for p in (root / "ALL").iterdir())[0] == "DC_a01.wav"
    assert len(get_corpus("savee", root).listing().clips) == 15


def test_emodb_names(stand_ins):
    listing = get_corpus("emodb", stand_ins["emodb"]).listing()
    clip = next(c for c in listing.clips if c.key == "08a02La")
    assert (clip.label, clip.speaker, clip.meta["gender"], clip.meta["version"]) == ("bored", "08", "female", "a")
    assert clip.meta["sentence"] == "Das will sie am Mittwoch abgeben."


def test_iemocap_speaker_is_the_last_fields_letter_and_exc_is_happy(stand_ins):
    corpus = get_corpus("iemocap", stand_ins["iemocap"])
    listing = corpus.listing()
    clip = next(c for c in listing.clips if c.key == "Ses01F_impro01_M000")
    assert clip.speaker == "Ses01M" and clip.meta["gender"] == "male" and clip.meta["session"] == "Ses01"
    assert iemocap_module.speaker_of("Ses03M_impro05b_F012") == "Ses03F"
    assert any(c.meta.get("original_label") == "exc" and c.label == "happy" for c in listing.clips)
    assert listing.labels == ("angry", "happy", "neutral", "sad")
    assert listing.not_kept == {"frustrated": 4, "no agreement": 4}
    assert corpus.protocol.group == "session" and corpus.protocol.test_groups(5) == ("Ses05",)
    assert "licence" in corpus.origin.message


# ---------------------------------------------------------------------------------------------
# Bad input


def damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "corrupt":
        path.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    else:  # truncated: the header promises more frames than the file holds
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name", STAND_INS)
@pytest.mark.parametrize(
    ("how", "reason"), [("empty", "empty file"), ("corrupt", "cannot be decoded"), ("truncated", "truncated")]
)
def test_unusable_audio_is_named_when_decoded(copy_of, name, how, reason):
    root = copy_of(name)
    corpus = get_corpus(name, root)
    clip = corpus.listing().clips[0]
    damage(Path(clip.location), how)
    with pytest.raises(AudioError, match=reason):
        clip_audio(get_corpus(name, root), clip)


MISNAMED = {
    "cremad": ("AudioWAV/1001_DFA_ANG.wav", "name is not {ActorID}_{Sentence}_{Emotion}_{Level}"),
    "tess": ("OAF_angry/OAF_back.wav", "name is not <OAF|YAF>_<word>_<emotion>"),
    "savee": ("AudioData/DC/x01.wav", "emotion code x is not one of"),
    "emodb": ("wav/03a01F.wav", "name is not <speaker><text><emotion><version>"),
    "iemocap": ("Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01.wav", "name is not an utterance"),
}


@pytest.mark.parametrize("name", STAND_INS)
def test_misnamed_file_is_a_problem(copy_of, name):
    root = copy_of(name)
    relative, reason = MISNAMED[name]
    any_wav = next(root.rglob("*.wav"))
    shutil.copy(any_wav, root / relative)
    listing = get_corpus(name, root).listing()
    assert reason in reasons(listing)[relative]
    assert len(listing.problems) == 1


def test_label_outside_the_corpus_set_is_a_problem(copy_of):
    root = copy_of("emodb")
    shutil.copy(root / "wav" / "03a01Wa.wav", root / "wav" / "03a01Xa.wav")
    listing = get_corpus("emodb", root).listing()
    assert "label 'X' is not one of EmoDB's" in reasons(listing)["03a01Xa"]


def test_duplicate_key_is_a_problem(copy_of):
    root = copy_of("tess")
    (root / "OAF_angry" / "copy").mkdir()
    shutil.copy(root / "OAF_angry" / "OAF_back_angry.wav", root / "OAF_angry" / "copy")
    listing = get_corpus("tess", root).listing()
    assert listing.problems[0].location.endswith("OAF_angry/copy/OAF_back_angry.wav")
    assert "duplicate key 'OAF_back_angry'" in listing.problems[0].reason


def test_misfiled_tess_clip_is_a_problem(copy_of):
    root = copy_of("tess")
    shutil.move(root / "OAF_Sad" / "OAF_back_sad.wav", root / "OAF_angry" / "OAF_back_sad.wav")
    assert (
        "OAF sad in the name but the file is in OAF_angry"
        in reasons(get_corpus("tess", root).listing())["OAF_angry/OAF_back_sad.wav"]
    )


def test_iemocap_side_file_entries_and_missing_files(copy_of):
    root = copy_of("iemocap")
    evaluation = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    lines = evaluation.read_text().splitlines()
    evaluation.write_text("\n".join(line for line in lines if "Ses01F_impro01_F001" not in line) + "\n")
    (root / "Session1" / "sentences" / "wav" / "Ses01M_impro01" / "Ses01M_impro01_M000.wav").unlink()
    listing = get_corpus("iemocap", root).listing()
    found = reasons(listing)
    assert (
        found["Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F001.wav"]
        == "no entry in EmoEvaluation/Ses01F_impro01.txt"
    )
    assert found["Ses01M_impro01_M000"].startswith("missing file (listed in EmoEvaluation/Ses01M_impro01.txt)")


def test_cremad_actor_missing_from_demographics_is_a_problem(copy_of):
    root = copy_of("cremad")
    csv_path = root / "VideoDemographics.csv"
    csv_path.write_text("\n".join(csv_path.read_text().splitlines()[:2]) + "\n")  # 1002 gone
    listing = get_corpus("cremad", root).listing()
    assert {p.reason for p in listing.problems} == {"actor 1002 is not in VideoDemographics.csv"}
    (root / "VideoDemographics.csv").unlink()
    assert "genders are unknown" in get_corpus("cremad", root).listing().problems[0].reason


def test_missing_corpus_says_where_to_get_it(tmp_path):
    with pytest.raises(CorpusSetupError, match="request it at https://sail.usc.edu"):
        get_corpus("iemocap", tmp_path / "nowhere").listing()


# ---------------------------------------------------------------------------------------------
# Labels


def test_labels_choose_classes_and_order_and_maps_merge(stand_ins):
    corpus = get_corpus("tess", stand_ins["tess"])
    listing = corpus.listing(labels=["sad", "angry"])
    assert listing.labels == ("sad", "angry")
    assert listing.label_index(next(c for c in listing.clips if c.label == "angry")) == 1
    assert listing.not_kept == {"disgust": 6, "fearful": 6, "happy": 6, "neutral": 6, "surprised": 6}
    renamed = corpus.listing(labels=["surprise", "neutral"], label_map={"ps": "surprise"})
    assert renamed.summary()["labels"] == {"surprise": 6, "neutral": 6}
    iemocap = get_corpus("iemocap", stand_ins["iemocap"])
    without_excited = iemocap.listing(label_map={"exc": None})
    assert without_excited.not_kept["exc"] == 4
    assert not any(c.meta.get("original_label") == "exc" for c in without_excited.clips)
    with pytest.raises(CorpusSetupError, match="names a label twice"):
        corpus.listing(labels=["sad", "sad"])


# ---------------------------------------------------------------------------------------------
# Manifests

EMOBOX_RAVDESS_NAMES = {
    "neutral": "Neutral",
    "calm": "Calm",
    "happy": "Happy",
    "sad": "Sad",
    "angry": "Angry",
    "fearful": "Fearful",
    "disgust": "Disgust",
    "surprised": "Surprised",
}
EMOBOX_RAVDESS_LABEL_MAP = {
    "Angry": "Angry",
    "Surprised": "Surprise",
    "Sad": "Sad",
    "Disgust": "Disgust",
    "Happy": "Happy",
    "Calm": "Calm",
    "Neutral": "Neutral",
    "Fearful": "Fear",
}


def emobox_entry(path: Path) -> dict:
    """One line of an EmoBox manifest, as its preparation scripts write it."""
    info = sf.info(path)
    name = parse_name(path.name)
    return {
        "key": "ravdess-" + path.stem,
        "dataset": "ravdess",
        "wav": str(path),
        "type": "raw",
        "sample_rate": info.samplerate,
        "num_frame": float(info.frames),
        "task": "category",
        "length": info.frames / info.samplerate,
        "emo": EMOBOX_RAVDESS_NAMES[name.emotion],
        "channel": 1,
    }


def write_emobox_folder(tree: Path, out: Path) -> Path:
    """``data/ravdess/`` as EmoBox ships it: the manifest, its label map and a folder per fold."""
    entries = [emobox_entry(path) for path in sorted(tree.glob("Actor_*/*.wav"))]
    out.mkdir(parents=True)
    lines = lambda rows: "".join(json.dumps(row) + "\n" for row in rows)  # noqa: E731
    (out / "ravdess.jsonl").write_text(lines(entries))
    (out / "label_map.json").write_text(json.dumps(EMOBOX_RAVDESS_LABEL_MAP, indent=4))
    for fold, actors in EMOBOX_FOLDS.items():
        (out / f"fold_{fold}").mkdir()
        test = [e for e in entries if int(e["key"][-2:]) in actors]
        train = [e for e in entries if int(e["key"][-2:]) not in actors]
        (out / f"fold_{fold}" / f"ravdess_test_fold_{fold}.jsonl").write_text(lines(test))
        (out / f"fold_{fold}" / f"ravdess_train_fold_{fold}.jsonl").write_text(lines(train))
    return out


def test_emobox_manifest_of_a_ravdess_tree_matches_the_ravdess_plug_in(tmp_path):
    tree = write_noise_corpus(tmp_path / "ravdess_tree", actors=RAVDESS_ACTORS, min_seconds=0.1, max_seconds=0.2)
    folder = write_emobox_folder(tree, tmp_path / "data" / "ravdess")
    manifest = get_corpus("manifest", folder)
    plug_in = get_corpus("ravdess", tree)
    from_manifest, from_plug_in = manifest.listing(), plug_in.listing()
    assert len(from_manifest.clips) == len(from_plug_in.clips) == 60 * len(RAVDESS_ACTORS)
    assert from_manifest.problems == []
    as_manifest = sorted((c.key.removeprefix("ravdess-"), c.label, c.speaker) for c in from_manifest.clips)
    as_plug_in = sorted((Path(c.key).stem, c.label, c.speaker) for c in from_plug_in.clips)
    assert as_manifest == as_plug_in
    assert set(from_manifest.labels) == set(from_plug_in.labels)
    stages = manifest.fold_stages(1)
    test_speakers = {c.speaker for c in from_manifest.clips if stages[c.key] == "test"}
    assert test_speakers == {"01", "11", "20", "21"} == set(plug_in.protocol.test_groups(1))
    with pytest.raises(CorpusSetupError, match="has no fold 7"):
        manifest.fold_stages(7)
    # the same manifest as a bare JSONL with its label map beside it
    assert len(get_corpus("manifest", folder / "ravdess.jsonl").listing().clips) == len(from_plug_in.clips)


def write_clip(path: Path, seconds: float = 1.0, rate: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32), rate)
    return path


def test_jsonl_manifest_bad_rows(tmp_path):
    write_clip(tmp_path / "audio" / "long.wav", seconds=2.0)
    rows = [
        {"key": "a", "wav": "audio/long.wav", "emo": "Angry", "start_time": 0.5, "end_time": 1.5},
        {"key": "a", "wav": "audio/long.wav", "emo": "Sad"},
        {"key": "b", "wav": "audio/gone.wav", "emo": "Sad"},
        {"key": "c", "wav": "audio/long.wav", "emo": "Bored"},
        {"key": "d", "wav": "audio/long.wav"},
        {"key": "e", "wav": "audio/long.wav", "emo": "Sad", "start_time": 1.0, "end_time": 3.0},
    ]
    manifest = tmp_path / "mine.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json\n")
    (tmp_path / "label_map.json").write_text(json.dumps({"Angry": "Angry", "Sad": "Sad"}))
    corpus = get_corpus("manifest", manifest)
    listing = corpus.listing()
    found = reasons(listing)
    assert found["a"] == "duplicate key 'a' (first at " + str(tmp_path / "audio" / "long.wav") + ")"
    assert found["b"] == "missing file"
    assert found["c"].startswith("label 'Bored' is not one of manifest's")
    assert found["d"] == "no label"
    assert found["line 7"] == "not a JSON object"
    assert [c.key for c in listing.clips] == ["a", "e"] and listing.labels == ("angry", "sad")
    samples, rate = clip_audio(corpus, listing.clips[0])
    assert len(samples) == rate  # 0.5 s to 1.5 s
    with pytest.raises(AudioError, match="past the end of the file"):
        clip_audio(corpus, listing.clips[1])


def test_csv_manifest_relative_paths_speakers_splits_and_labels(tmp_path):
    write_clip(tmp_path / "clips" / "one.wav")
    write_clip(tmp_path / "clips" / "two.wav")
    write_clip(tmp_path / "clips" / "three.wav")
    write_clip(tmp_path / "clips" / "four.wav")
    manifest = tmp_path / "lists" / "mine.csv"
    manifest.parent.mkdir()
    rows = [
        "path,label,speaker,split",
        "../clips/one.wav,joy,s1,train",
        "../clips/two.wav,anger,s2,validation",
        "../clips/two.wav,anger,s2,test",
        "../clips/three.wav,,s1,test",
        "../clips/four.wav,boredom,s1,",
        "../clips/gone.wav,joy,s3,test",
    ]
    manifest.write_text("\n".join(rows) + "\n")
    corpus = get_corpus("manifest", manifest)
    listing = corpus.listing(labels=["joy", "anger"])
    assert [(c.key, c.label, c.speaker, c.stage) for c in listing.clips] == [
        ("../clips/one.wav", "joy", "s1", "train"),
        ("../clips/two.wav", "anger", "s2", "val"),
    ]
    assert reasons(listing) == {
        "../clips/two.wav": f"duplicate key '../clips/two.wav' (first at {tmp_path / 'lists/../clips/two.wav'})",
        "../clips/three.wav": "no label",
        "../clips/four.wav": "label 'boredom' is outside data.labels (joy, anger)",
        "../clips/gone.wav": "missing file",
    }
    assert corpus.protocol_for(c.speaker for c in listing.clips).folds == {1: ("s1",), 2: ("s2",)}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,emotion\nx.wav,joy\n")
    with pytest.raises(CorpusSetupError, match="needs a header with path and label"):
        get_corpus("manifest", bad).listing()


def test_csv_row_without_label(tmp_path):
    write_clip(tmp_path / "one.wav")
    (tmp_path / "m.csv").write_text("path,label\none.wav,\n")
    assert reasons(get_corpus("manifest", tmp_path / "m.csv").listing()) == {"one.wav": "no label"}


def test_folders_take_labels_from_folders_and_stages_from_split_folders(tmp_path):
    write_clip(tmp_path / "plain" / "happy" / "spk1_a.wav")
    write_clip(tmp_path / "plain" / "sad" / "spk2_b.wav")
    write_clip(tmp_path / "plain" / "stray.wav")
    listing = get_corpus("folders", tmp_path / "plain", speaker_separator="_").listing()
    assert [(c.label, c.speaker, c.stage) for c in listing.clips] == [("happy", "spk1", None), ("sad", "spk2", None)]
    assert reasons(listing) == {"stray.wav": "not in a label folder"}
    write_clip(tmp_path / "split" / "train" / "happy" / "a.wav")
    write_clip(tmp_path / "split" / "test" / "sad" / "b.wav")
    split = get_corpus("folders", tmp_path / "split").listing()
    assert [(c.label, c.stage, c.speaker) for c in split.clips] == [
        ("sad", "test", "unknown"),
        ("happy", "train", "unknown"),
    ]


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    paths = [write_clip(tmp_path / f"{i}.wav", seconds=0.5 + 0.1 * i) for i in range(3)]
    features = datasets.Features(
        {
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "emotion": datasets.ClassLabel(names=["angry", "sad"]),
            "who": datasets.Value("string"),
        }
    )
    rows = {
        "audio": [{"bytes": p.read_bytes(), "path": p.name} for p in paths],
        "emotion": [0, 1, 1],
        "who": ["a", "b", "a"],
    }
    table = datasets.Dataset.from_dict(rows, features=features).cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict({"train": table, "test": table.select([1])}).save_to_disk(str(tmp_path / "saved"))
    corpus = get_corpus("hf", tmp_path / "saved", label_column="emotion", speaker_column="who")
    listing = corpus.listing()
    assert [(c.key, c.label, c.speaker, c.stage) for c in listing.clips] == [
        ("train/0", "angry", "a", "train"),
        ("train/1", "sad", "b", "train"),
        ("train/2", "sad", "a", "train"),
        ("test/0", "sad", "b", "test"),
    ]
    samples, rate = clip_audio(corpus, next(c for c in listing.clips if c.key == "train/2"))
    assert rate == 16_000 and len(samples) == int(0.7 * 16_000)
    with pytest.raises(CorpusSetupError, match="has no column label"):
        get_corpus("hf", tmp_path / "saved").listing()


def test_csv_segments_of_one_file_are_separate_clips_and_must_make_a_clip(tmp_path):
    write_clip(tmp_path / "a.wav", seconds=1.0)
    (tmp_path / "m.csv").write_text("path,label,start,end\na.wav,x,0.0,0.5\na.wav,y,0.8,0.2\na.wav,y,1.5,2.0\n")
    corpus = get_corpus("manifest", tmp_path / "m.csv")
    first, backwards, late = corpus.listing().clips
    assert (first.key, first.start, first.end) == ("a.wav@0.0-0.5", 0.0, 0.5)
    assert len(clip_audio(corpus, first)[0]) == 8_000
    with pytest.raises(AudioError, match="do not make a clip"):
        clip_audio(corpus, backwards)
    with pytest.raises(AudioError, match="past the end of the file"):
        clip_audio(corpus, late)


def test_emobox_paths_relative_to_its_checkout_resolve_against_audio_root(tmp_path):
    write_clip(tmp_path / "EmoBox" / "downloads" / "savee" / "DC_a01.wav")
    folder = tmp_path / "EmoBox" / "data" / "savee"
    folder.mkdir(parents=True)
    entry = {"key": "savee-DC-a01", "dataset": "savee", "wav": "downloads/savee/DC_a01.wav", "emo": "a"}
    (folder / "savee.jsonl").write_text(json.dumps(entry) + "\n")
    (folder / "label_map.json").write_text(json.dumps({"a": "Angry", "sa": "Sad"}))
    assert reasons(get_corpus("manifest", folder).listing()) == {"savee-DC-a01": "missing file"}
    listing = get_corpus("manifest", folder, audio_root=tmp_path / "EmoBox").listing()
    assert [(c.key, c.label, c.speaker) for c in listing.clips] == [("savee-DC-a01", "angry", "DC")]
    assert listing.labels == ("angry", "sad")


def test_ravdess_stand_in_refuses_more_actors_than_ravdess_has(tmp_path):
    with pytest.raises(StandInError, match="outside 1-24 for ravdess"):
        write_stand_in(tmp_path / "r", "ravdess", speakers=25)


@pytest.mark.parametrize("container", ["WAV", "FLAC", "AIFF"])
def test_16_bit_audio_decodes_to_the_floats_libsndfile_gives(container):
    import io

    from ser.data.audio import decode

    samples = np.random.default_rng(0).integers(-32768, 32768, size=(4800, 2), dtype=np.int16)
    samples[:2] = [[-32768, 32767], [32767, -32768]]  # both extremes, in both channels
    encoded = io.BytesIO()
    sf.write(encoded, samples, 48_000, format=container, subtype="PCM_16")
    decoded, rate = decode(encoded.getvalue())
    expected, _ = sf.read(io.BytesIO(encoded.getvalue()), dtype="float32", always_2d=True)
    assert rate == 48_000 and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)


def test_tess_rate_resamples_quickly_and_usual_rates_as_torchaudio_does(stand_ins):
    import time

    import torch
    import torchaudio.functional as AF

    from ser.data.audio import to_model_input

    corpus = get_corpus("tess", stand_ins["tess"])
    samples, rate = clip_audio(corpus, corpus.listing().clips[0])
    started = time.perf_counter()
    model_input = to_model_input(samples, rate, normalize=False)
    assert time.perf_counter() - started < 5  # the exact 24414 -> 16000 kernel takes tens of seconds
    assert abs(len(model_input) - len(samples) * 16_000 / rate) <= 1
    for rate, length in [(44_100, 4410), (48_000, 133_562), (8_000, 1), (22_050, 22_051)]:
        noise = np.random.default_rng(0).standard_normal((length, 1)).astype(np.float32)
        expected = AF.resample(torch.from_numpy(noise[:, 0].copy()), rate, 16_000).numpy()
        # the same filter and length, summed in another order: float32 rounding apart, which for 22050 Hz
        # is 7e-5 between torchaudio's float32 and float64 results. An approximate ratio would drift further.
        resampled = to_model_input(noise, rate, normalize=False)
        assert resampled.shape == expected.shape
        np.testing.assert_allclose(resampled, expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Wired in: data=<corpus> through preparation, splits, the data module, training and evaluation


def data_module(name: str, root: Path, cache: Path, *overrides: str, **replace):
    from ser.config import compose_data
    from ser.data.datamodule import RavdessDataModule

    cfg = compose_data([f"data={name}", f"data.root={root}", f"data.cache_dir={cache}", *overrides])
    return RavdessDataModule.from_config(cfg, seed=0, progress=False, **replace)


@pytest.mark.parametrize("name", STAND_INS)
def test_prepare_reports_the_clips_labels_and_speakers_of_each_stand_in(stand_ins, name, tmp_path):
    corpus = data_module(name, stand_ins[name], tmp_path / "cache").load_corpus()
    listing = get_corpus(name, stand_ins[name]).listing()
    summary = corpus.summary()
    assert summary["corpus"] == name and summary["clips"] == len(listing.clips) and not corpus.skipped
    assert summary["labels"] == list(listing.labels) == list(CORPORA[name].default_labels)
    assert sorted(summary["speakers"]) == sorted(stand_in_speakers(name))
    assert {clip["key"] for clip in corpus.clips} == {clip.key for clip in listing.clips}
    assert all(clip["emotion"] == corpus.labels[clip["label"]] for clip in corpus.clips)


def damage_files(root: Path) -> dict[str, str]:
    """A corrupt, an empty, a truncated and a misnamed file among a corpus's clips: path -> the reason's start."""
    wavs = sorted(root.rglob("*.wav"))
    wavs[0].write_bytes(b"RIFF but not audio" * 20)
    wavs[1].write_bytes(b"")
    data = wavs[2].read_bytes()
    wavs[2].write_bytes(data[: len(data) // 2])
    misnamed = wavs[3].parent / "misnamed_clip.wav"
    shutil.copy(wavs[3], misnamed)
    return {str(wavs[0]): "cannot be decoded", str(wavs[1]): "empty file", str(wavs[2]): "truncated", str(misnamed): ""}


@pytest.mark.parametrize("name", ("ravdess", *STAND_INS))
def test_bad_files_are_named_and_skipped_and_strict_refuses_them(copy_of, name, tmp_path):
    from ser.data.prepare import StrictError

    root = write_noise_corpus(tmp_path / name, actors=(1, 2), max_seconds=0.3) if name == "ravdess" else copy_of(name)
    expected = damage_files(root)
    corpus = data_module(name, root, tmp_path / "cache").load_corpus()
    skipped = {row["location"]: row["reason"] for row in corpus.skipped}
    assert set(skipped) == set(expected)
    for location, reason in expected.items():
        assert skipped[location].startswith(reason)
    assert "misnamed_clip" not in {clip["key"] for clip in corpus.clips}
    table = (corpus.path / "skipped.tsv").read_text().splitlines()
    assert len(table) == 5 and all(row.split("\t")[0] in expected for row in table[1:])
    with pytest.raises(StrictError, match=r"^4 unusable file\(s\)"):
        data_module(name, root, tmp_path / "cache", "data.strict=true").load_corpus()


def test_folds_hold_out_the_corpus_protocols_groups(stand_ins, tmp_path):
    tess = data_module("tess", stand_ins["tess"], tmp_path / "cache")
    tess.setup()
    speakers = lambda stage: {tess.corpus.clips[int(i)]["speaker"] for i in tess.split[stage]}  # noqa: E731
    assert speakers("test") == {"OAF"} and speakers("train") == speakers("val") == {"YAF"}
    assert not set(tess.split["train"]) & set(tess.split["val"])  # two speakers: validation is part of YAF's clips
    assert tess.labels == ["angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]

    iemocap = data_module("iemocap", stand_ins["iemocap"], tmp_path / "cache", "data.fold=2")
    iemocap.setup()
    test = {iemocap.corpus.clips[int(i)]["speaker"] for i in iemocap.split["test"]}
    assert test == {"Ses02F", "Ses02M"}  # leave-one-session-out: both speakers of session 2
    assert iemocap.labels == ["angry", "happy", "neutral", "sad"]
    from ser.config import compose_data
    from ser.data.splits import describe_protocol

    assert describe_protocol(compose_data(["data=iemocap", "data.fold=2"]), iemocap.protocol) == (
        "iemocap: IEMOCAP leave-one-session-out, fold 2 of 5 (speaker-independent)"
    )


def test_labels_and_label_map_choose_the_classes_of_a_prepared_corpus(stand_ins, tmp_path):
    module = data_module(
        "tess",
        stand_ins["tess"],
        tmp_path / "cache",
        "data.labels=[neutral,surprise,angry]",
        "data.label_map.ps=surprise",
    )
    corpus = module.load_corpus()
    assert corpus.labels == ["neutral", "surprise", "angry"] == module.labels
    assert {clip["emotion"] for clip in corpus.clips} == {"neutral", "surprise", "angry"}
    assert set(corpus.not_kept) == {"disgust", "fearful", "happy", "sad"} and all(corpus.not_kept.values())


def test_emobox_folder_through_the_data_module_tests_fold_1_on_actors_1_11_20_21(tmp_path):
    tree = write_noise_corpus(tmp_path / "ravdess_tree", actors=RAVDESS_ACTORS, min_seconds=0.1, max_seconds=0.2)
    folder = write_emobox_folder(tree, tmp_path / "data" / "ravdess")
    manifest = data_module(
        "manifest", folder, tmp_path / "cache", "data.split=fold", "data.fold=1", "data.val_actors=1"
    )
    ravdess = data_module("ravdess", tree, tmp_path / "cache", "data.split=fold", "data.fold=1", "data.val_actors=1")
    manifest.setup()
    ravdess.setup()
    assert len(manifest.corpus.clips) == len(ravdess.corpus.clips) == 60 * len(RAVDESS_ACTORS)
    test_speakers = {manifest.corpus.clips[int(i)]["speaker"] for i in manifest.split["test"]}
    assert test_speakers == {"01", "11", "20", "21"}
    assert {f"{ravdess.corpus.clips[int(i)]['actor']:02d}" for i in ravdess.split["test"]} == test_speakers
    assert sorted(manifest.labels) == sorted(ravdess.labels)


def test_shared_labels_name_what_each_side_leaves_out():
    from ser.evaluate import scoring_line, shared_labels

    shared, model_only, corpus_only = shared_labels(
        ["angry", "calm", "fear", "happy", "sad"], ["angry", "fearful", "happy", "sad", "bored"]
    )
    assert shared == {"angry": 0, "fearful": 2, "happy": 3, "sad": 4} and model_only == ["calm"]
    assert corpus_only == ["bored"]
    assert scoring_line(["angry", "calm"], ["calm", "angry"]) == "scoring all 2 classes"


def test_summarize_draws_the_cross_corpus_matrix(tmp_path):
    from ser.summarize import summarize

    scores = {"ravdess": (0.6, {"cremad": 0.3, "tess": 0.2}), "cremad": (0.5, {"ravdess": 0.25, "tess": 0.4})}
    for number, (corpus, (own, cross)) in enumerate(scores.items()):
        job = tmp_path / str(number)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- data={corpus}\n")
        metrics = {"corpus": corpus, "protocol": "p", "test/uar": own, "test/acc": own, "test/f1": own}
        metrics |= {f"cross/{name}/uar": value for name, value in cross.items()}
        metrics |= {f"cross/{name}/scoring": f"scoring {name}" for name in cross}
        (job / "metrics.json").write_text(json.dumps(metrics))
    summary = summarize(tmp_path, quiet=True)
    matrix = summary.matrix
    assert matrix.train == ["ravdess", "cremad"] and matrix.test == ["ravdess", "cremad", "tess"]
    np.testing.assert_allclose(matrix.uar, [[0.6, 0.3, 0.2], [0.25, 0.5, 0.4]])
    assert (tmp_path / "cross_corpus.png").stat().st_size > 0
    assert "| ravdess | 60.0 | 30.0 | 20.0 |" in (tmp_path / "cross_corpus.md").read_text()


def tiny_train_overrides(*extra: str) -> list[str]:
    from .helpers import TINY_ENCODER

    encoder = json.dumps(TINY_ENCODER, separators=(",", ":")).replace('"', "")
    return [
        "model=tiny",
        f"model.encoder_config={encoder}",
        "data.synthesize_actors=2",
        "data.batch_size=8",
        "data.max_seconds=0.5",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "logger=csv",
        *extra,
    ]


@pytest.mark.slow
def test_cross_corpus_multirun_ends_with_the_matrix(tmp_path):
    from .helpers import run_python

    train_py = Path(__file__).resolve().parent.parent / "train.py"
    sweep = tmp_path / "multirun"
    result = run_python(
        [
            train_py,
            "-m",
            "data=ravdess,cremad,tess",
            "eval_corpora=[ravdess,cremad,tess]",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
            *tiny_train_overrides(),
        ],
        cwd=tmp_path,  # each corpus's stand-in is made at its default root, data/<corpus>
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in range(3):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        others = {"ravdess", "cremad", "tess"} - {metrics["corpus"]}
        assert {key.split("/")[1] for key in metrics if key.startswith("cross/")} == others
    rows = (sweep / "cross_corpus.csv").read_text().splitlines()
    assert rows[0] == "train,ravdess,cremad,tess" and len(rows) == 4
    assert all("nan" not in row for row in rows[1:])
    assert (sweep / "cross_corpus.png").stat().st_size > 0
    summarized = run_python(["-m", "ser.cli", "summarize", sweep], cwd=tmp_path)
    assert "cross-corpus UA (%)" in summarized.stdout
    assert "ravdess -> tess: scoring the 7 shared classes" in summarized.stdout  # all of TESS's; calm left out
    assert "cremad -> tess: scoring the 6 shared classes" in summarized.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ("ravdess", *STAND_INS))
def test_training_runs_on_each_corpus(name, tmp_path):
    from ser.train import train

    from .helpers import compose_config

    cfg = compose_config(
        [
            f"data={name}",
            f"data.root={tmp_path / name}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"run_dir={tmp_path / 'run'}",
            *tiny_train_overrides(),
        ]
    )
    metrics = train(cfg)
    labels = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["corpus"] == labels["corpus"] == name and 0.0 <= metrics["test/uar"] <= 1.0
    expected = CORPORA[name].default_labels
    assert [key.removeprefix("test/recall/") for key in metrics if key.startswith("test/recall/")] == [
        label for label in expected if f"test/recall/{label}" in metrics
    ]

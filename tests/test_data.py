"""The data pipeline: names, bad input, sources, the cache, splits and batching."""

from __future__ import annotations

import csv
import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ser.config import DataConfig
from ser.data import audio
from ser.data import prepare as prepare_module
from ser.data.batching import ClipDataset, LengthBucketBatchSampler, collate, pad_batch, padding_fraction
from ser.data.corpus import CorpusError
from ser.data.datamodule import RavdessDataModule
from ser.data.prepare import PrepareSettings, StrictError, prepare
from ser.data.ravdess import EMOBOX_FOLDS, EMOTIONS, parse_name
from ser.data.splits import SplitError, make_split, write_manifest

from .helpers import clip_names, write_noise_corpus

# --- names ---------------------------------------------------------------------------------------


def test_parse_name_reads_all_fields():
    name = parse_name("Actor_12/03-01-06-02-01-02-12.wav")
    assert (name.modality, name.vocal_channel, name.emotion) == (3, 1, "fearful")
    assert (name.intensity, name.statement, name.repetition, name.actor) == (2, 1, 2, 12)
    assert name.gender == "female" and parse_name("03-01-01-01-01-01-07.wav").gender == "male"
    assert EMOTIONS[name.label] == "fearful"
    assert name.stem == "03-01-06-02-01-02-12"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("recording.wav", "seven two-digit fields"),
        ("03-01-06-02-01-02.wav", "seven two-digit fields"),
        ("03-01-09-01-01-01-01.wav", "emotion 09"),
        ("03-01-01-02-01-01-01.wav", "neutral has no strong intensity"),
        ("03-01-05-01-01-01-25.wav", "actor 25"),
        ("03-03-05-01-03-01-01.wav", "vocal channel 03"),
    ],
)
def test_parse_name_rejects_names_outside_the_scheme(bad, reason):
    with pytest.raises(ValueError, match=reason):
        parse_name(bad)


def test_labels_are_the_published_models_order():
    assert EMOTIONS == ("angry", "calm", "disgust", "fearful", "happy", "neutral", "sad", "surprised")


# --- preparing and bad input ---------------------------------------------------------------------


def _spoil(root):
    """One corrupt, one empty, one truncated, one misnamed file; returns their paths."""
    corrupt = root / "Actor_01" / "03-01-01-01-01-01-01.wav"
    corrupt.write_bytes(os.urandom(3000))
    empty = root / "Actor_01" / "03-01-02-01-01-01-01.wav"
    empty.write_bytes(b"")
    truncated = root / "Actor_02" / "03-01-03-01-01-01-02.wav"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    misnamed = root / "Actor_02" / "angry take 3.wav"
    sf.write(misnamed, np.zeros(4800, dtype=np.float32), 48_000, subtype="PCM_16")
    return {"corrupt": corrupt, "empty": empty, "truncated": truncated, "misnamed": misnamed}


def test_prepare_reads_every_clip_with_metadata(noise_corpus, tmp_path):
    corpus = prepare(noise_corpus, tmp_path / "cache", progress=False)
    assert len(corpus.clips) == 4 * 60 and not corpus.skipped
    summary = corpus.summary()
    assert set(summary["emotions"]) == set(EMOTIONS) and summary["actors"] == {1: 60, 2: 60, 3: 60, 4: 60}
    clip = next(c for c in corpus.clips if c["key"] == "Actor_03/03-01-05-02-01-02-03.wav")
    assert (clip["emotion"], clip["actor"], clip["gender"], clip["intensity"]) == ("angry", 3, "male", 2)
    # 48 kHz 16-bit on disk -> 16 kHz mono, normalised like Wav2Vec2FeatureExtractor
    frames = sf.info(str(noise_corpus / clip["key"])).frames
    wave = corpus.waveform(corpus.clips.index(clip))
    assert len(wave) == -(-frames // 3) and wave.dtype == np.float32
    assert abs(wave.mean()) < 1e-3 and abs(wave.std() - 1) < 1e-3


def test_bad_files_are_reported_with_reasons_and_nothing_else_is_lost(noise_corpus, tmp_path):
    spoiled = _spoil(noise_corpus)
    corpus = prepare(noise_corpus, tmp_path / "cache", progress=False)
    reasons = {s["location"]: s["reason"] for s in corpus.skipped}
    assert set(reasons) == {str(p) for p in spoiled.values()}
    assert "cannot be decoded" in reasons[str(spoiled["corrupt"])]
    assert "empty" in reasons[str(spoiled["empty"])]
    assert "truncated" in reasons[str(spoiled["truncated"])]
    assert "name outside the RAVDESS scheme" in reasons[str(spoiled["misnamed"])]
    assert len(corpus.clips) == 4 * 60 - 3


def test_strict_refuses_a_corpus_with_bad_files_and_lists_them(noise_corpus, tmp_path):
    spoiled = _spoil(noise_corpus)
    with pytest.raises(StrictError) as error:
        prepare(noise_corpus, tmp_path / "cache", strict=True, progress=False)
    for path in spoiled.values():
        assert str(path) in str(error.value)
    # the same refusal from a warm cache, without decoding again
    with pytest.raises(StrictError):
        prepare(noise_corpus, tmp_path / "cache", strict=True, progress=False)


def test_duplicates_by_name_and_by_content_are_reported(noise_corpus, tmp_path):
    original = noise_corpus / "Actor_01" / "03-01-05-01-01-01-01.wav"
    (noise_corpus / "copies" / "Actor_01").mkdir(parents=True)
    shutil.copy(original, noise_corpus / "copies" / "Actor_01" / original.name)  # same name elsewhere
    corpus = prepare(noise_corpus, tmp_path / "cache", progress=False)
    assert [s["reason"] for s in corpus.skipped] == [f"duplicate of {original}"]

    other = noise_corpus / "Actor_01" / "03-01-05-01-01-02-01.wav"
    shutil.copy(original, other)  # same audio under another clip's name
    shutil.rmtree(noise_corpus / "copies")
    corpus = prepare(noise_corpus, tmp_path / "cache", progress=False)
    assert len(corpus.skipped) == 1 and corpus.skipped[0]["reason"].startswith("same content as")


def test_actor_folder_and_name_must_agree(noise_corpus, tmp_path):
    moved = noise_corpus / "Actor_02" / "03-01-05-01-01-01-01.wav"
    (noise_corpus / "Actor_01" / moved.name).rename(moved)
    corpus = prepare(noise_corpus, tmp_path / "cache", progress=False)
    assert "actor 01 in the name but the file is in Actor_02" in corpus.skipped[0]["reason"]


def test_song_clips_are_excluded_not_reported(noise_corpus, tmp_path):
    song = noise_corpus / "Actor_01" / "03-02-05-01-01-01-01.wav"
    shutil.copy(noise_corpus / "Actor_01" / "03-01-05-01-01-01-01.wav", song)
    corpus = prepare(noise_corpus, tmp_path / "cache", progress=False)
    assert corpus.excluded == 1 and not corpus.skipped and len(corpus.clips) == 240


def test_archive_and_directory_give_the_same_manifest(noise_corpus, tmp_path):
    nested = tmp_path / "extracted" / "Audio_Speech_Actors_01-24"
    shutil.copytree(noise_corpus, nested)
    archive = tmp_path / "Audio_Speech_Actors_01-24.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(noise_corpus.rglob("*.wav")):
            zf.write(path, path.relative_to(noise_corpus).as_posix())
    from_dir = prepare(tmp_path / "extracted", tmp_path / "cache", progress=False)
    from_zip = prepare(archive, tmp_path / "cache", progress=False)
    assert from_dir.path != from_zip.path
    assert from_dir.clips == from_zip.clips
    np.testing.assert_array_equal(np.asarray(from_dir.samples), np.asarray(from_zip.samples))


def test_a_directory_holding_the_archive_is_read_from_it(noise_corpus, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    with zipfile.ZipFile(folder / "Audio_Speech_Actors_01-24.zip", "w") as zf:
        for path in sorted(noise_corpus.rglob("*.wav"))[:70]:
            zf.write(path, path.relative_to(noise_corpus).as_posix())
    corpus = prepare(folder, tmp_path / "cache", download=False, progress=False)
    assert len(corpus.clips) == 70 and "archive" in corpus.source


def test_missing_corpus_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(CorpusError, match="Audio_Speech_Actors_01-24.zip"):
        prepare(tmp_path / "nowhere", tmp_path / "cache", download=False, progress=False)


# --- the cache -----------------------------------------------------------------------------------


def _forbid_decoding(monkeypatch):
    def refuse(task):
        raise AssertionError("decoded although the cache was warm")

    monkeypatch.setattr(prepare_module, "_process", refuse)


def test_warm_cache_does_not_decode(noise_corpus, tmp_path, monkeypatch):
    cold = prepare(noise_corpus, tmp_path / "cache", progress=False)
    _forbid_decoding(monkeypatch)
    warm = prepare(noise_corpus, tmp_path / "cache", progress=False)
    assert warm.path == cold.path and warm.clips == cold.clips
    assert isinstance(warm.samples, np.memmap)


def test_changed_file_or_setting_prepares_again(noise_corpus, tmp_path):
    first = prepare(noise_corpus, tmp_path / "cache", progress=False)
    other_setting = prepare(noise_corpus, tmp_path / "cache", PrepareSettings(normalize=False), progress=False)
    assert other_setting.path != first.path
    assert abs(float(np.asarray(other_setting.waveform(0)).std()) - 1) > 0.1  # really not normalised

    changed = noise_corpus / first.clips[0]["key"]
    sf.write(changed, np.zeros(9600, dtype=np.float32), 48_000, subtype="PCM_16")
    os.utime(changed, ns=(1, 1))
    again = prepare(noise_corpus, tmp_path / "cache", progress=False)
    assert again.path != first.path and again.clips[0]["length"] == 3200


def test_an_interrupted_preparation_leaves_no_valid_cache(noise_corpus, tmp_path, monkeypatch):
    real = prepare_module._process
    calls = []

    def interrupt_midway(task):
        calls.append(1)
        if len(calls) == 100:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_module, "_process", interrupt_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare(noise_corpus, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(prepare_module, "_process", real)
    assert len(prepare(noise_corpus, tmp_path / "cache", progress=False).clips) == 240


def test_parallel_preparation_matches_serial(noise_corpus, tmp_path):
    serial = prepare(noise_corpus, tmp_path / "serial", workers=1, progress=False)
    parallel = prepare(noise_corpus, tmp_path / "parallel", workers=4, progress=False)
    assert serial.clips == parallel.clips
    np.testing.assert_array_equal(np.asarray(serial.samples), np.asarray(parallel.samples))


# --- splits --------------------------------------------------------------------------------------


def _metadata(actors=range(1, 25)):
    clips = []
    for name in clip_names(actors):
        parsed = parse_name(name)
        clips.append(
            {
                "key": name,
                "label": parsed.label,
                "emotion": parsed.emotion,
                "actor": parsed.actor,
                "gender": parsed.gender,
            }
        )
    return clips


def test_random_split_is_stratified_and_validates_on_test():
    clips = _metadata()
    split = make_split(clips, "random", seed=42)
    assert len(split["train"]) == 1152 and len(split["test"]) == 288
    np.testing.assert_array_equal(split["val"], split["test"])
    train_counts = Counter(clips[i]["emotion"] for i in split["train"])
    test_counts = Counter(clips[i]["emotion"] for i in split["test"])
    for emotion in EMOTIONS:
        assert abs(test_counts[emotion] / 288 - (train_counts[emotion] + test_counts[emotion]) / 1440) < 0.01
    assert {clips[i]["actor"] for i in split["test"]} == set(
        range(1, 25)
    )  # speakers shared: the point of this protocol


@pytest.mark.parametrize("fold", range(1, 7))
def test_emobox_folds_hold_out_the_listed_actors(fold):
    clips = _metadata()
    split = make_split(clips, "fold", seed=0, fold=fold)
    actors = {stage: {clips[i]["actor"] for i in split[stage]} for stage in split}
    assert actors["test"] == set(EMOBOX_FOLDS[fold])
    assert len(split["test"]) == 240
    assert not actors["val"] & actors["test"] and not actors["train"] & (actors["val"] | actors["test"])
    assert len(actors["val"]) == 2 and {a % 2 for a in actors["val"]} == {0, 1}
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 1440


def test_speaker_split_is_actor_disjoint_and_gender_balanced():
    clips = _metadata()
    split = make_split(clips, "speaker", seed=3, val_actors=4, test_actors=4)
    actors = {stage: {clips[i]["actor"] for i in split[stage]} for stage in split}
    assert (
        not (actors["train"] & actors["val"])
        and not (actors["train"] & actors["test"])
        and not (actors["val"] & actors["test"])
    )
    for stage in ("val", "test"):
        assert sorted(a % 2 for a in actors[stage]) == [0, 0, 1, 1]
    assert len(actors["train"]) == 16


def test_splits_are_deterministic_per_seed():
    clips = _metadata()
    for kind in ("random", "speaker", "fold"):
        a, b = make_split(clips, kind, seed=7, fold=2), make_split(clips, kind, seed=7, fold=2)
        assert all(np.array_equal(a[s], b[s]) for s in a)
    a, b = make_split(clips, "speaker", seed=1), make_split(clips, "speaker", seed=2)
    assert not np.array_equal(a["test"], b["test"])


def test_split_errors_say_what_to_change():
    with pytest.raises(SplitError, match="folds 1 to 6"):
        make_split(_metadata(), "fold", fold=7)
    with pytest.raises(SplitError, match="unknown"):
        make_split(_metadata(), "leave-one-out")
    with pytest.raises(SplitError, match="needs more than"):
        make_split(_metadata(actors=(1, 2, 3)), "speaker")


def test_manifest_lists_every_clip_by_stage(tmp_path):
    clips = _metadata(actors=range(1, 9))
    split = make_split(clips, "speaker", seed=0, val_actors=2, test_actors=2)
    path = write_manifest(tmp_path / "run" / "split.csv", clips, split)
    rows = path.read_text().splitlines()
    assert rows[0].startswith("stage,key,emotion,actor")
    assert len(rows) == 1 + len(clips)


# --- trimming ------------------------------------------------------------------------------------


def speech_in_noise(peak_above_noise_db: float, rate: int = 16_000) -> tuple[np.ndarray, slice]:
    """1 s of room noise, 1.5 s of a tone ``peak_above_noise_db`` louder, 1 s of noise; and where the tone is."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(int(3.5 * rate)).astype(np.float32) * 1e-3
    speech = slice(rate, int(2.5 * rate))
    t = np.arange(speech.stop - speech.start) / rate
    noise[speech] += (1e-3 * 10 ** (peak_above_noise_db / 20) * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return noise, speech


@pytest.mark.parametrize("peak_above_noise_db", [60.0, 38.0])  # loud speech; soft speech, nearer the floor than 40 dB
def test_trimming_keeps_the_speech_and_a_margin_and_cuts_the_noise(peak_above_noise_db):
    samples, speech = speech_in_noise(peak_above_noise_db)
    start, end = audio.speech_bounds(samples, 16_000, threshold_db=-40.0, margin_seconds=0.1)
    frame, margin = 320, 1600  # 20 ms, 0.1 s
    assert speech.start - margin - frame <= start <= speech.start - margin + frame
    assert speech.stop + margin - frame <= end <= speech.stop + margin + frame
    np.testing.assert_array_equal(audio.trim_silence(samples, 16_000), samples[start:end])


def test_trimming_leaves_a_clip_without_silence_whole():
    tone = np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000).astype(np.float32)
    assert audio.speech_bounds(tone, 16_000) == (0, 16_000)


# --- batching ------------------------------------------------------------------------------------


def test_bucketed_batches_pad_far_less_than_random_batches():
    lengths = np.random.default_rng(0).integers(40_000, 90_000, size=1000)
    sampler = LengthBucketBatchSampler(lengths, batch_size=8, shuffle=True, seed=0)
    bucketed = padding_fraction(lengths, list(sampler))
    order = np.random.default_rng(1).permutation(1000)
    random = padding_fraction(lengths, [order[i : i + 8] for i in range(0, 1000, 8)])
    assert bucketed < 0.05 and random > 0.15 and bucketed < random / 5


def test_bucketed_sampler_yields_every_clip_once_per_epoch_in_a_new_order():
    lengths = np.arange(101)
    sampler = LengthBucketBatchSampler(lengths, batch_size=4, shuffle=True, seed=0)
    first = [i for batch in sampler for i, _ in batch]
    second = [i for batch in sampler for i, _ in batch]
    assert sorted(first) == sorted(second) == list(range(101))
    assert first != second and len(sampler) == 26


def test_ranks_share_out_the_evaluation_batches_and_count_each_clip_once():
    # training batches (shuffle=True) are checked step by step in test_ddp.py
    lengths = np.arange(50)
    shares = [list(LengthBucketBatchSampler(lengths, 4, False, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    flat = [[i[0] if isinstance(i, tuple) else i for i in batch] for share in shares for batch in share]
    seen = Counter(i for batch in flat for i in batch)
    assert set(seen) == set(range(50))
    assert all(count == 1 for count in seen.values())


def test_sampler_resumes_mid_epoch_where_it_stopped():
    lengths = np.arange(40)
    full = list(LengthBucketBatchSampler(lengths, 4, shuffle=True, seed=5))
    interrupted = LengthBucketBatchSampler(lengths, 4, shuffle=True, seed=5)
    iterator = iter(interrupted)
    done = [next(iterator) for _ in range(3)]
    resumed = LengthBucketBatchSampler(lengths, 4, shuffle=True, seed=5)
    resumed.load_state_dict(interrupted.state_dict())
    assert done + list(resumed) == full


def test_collate_pads_with_a_mask_and_crops_reproducibly(noise_corpus, tmp_path):
    corpus = prepare(noise_corpus, tmp_path / "cache", progress=False)
    dataset = ClipDataset(corpus, range(10), max_samples=8000, seed=1)
    items = [dataset[(i, 0)] for i in range(3)]
    assert all(len(item["waveform"]) <= 8000 for item in items)
    np.testing.assert_array_equal(dataset[(0, 0)]["waveform"], items[0]["waveform"])
    batch = collate(items)
    assert batch["waveforms"].shape == batch["attention_mask"].shape == (3, max(len(i["waveform"]) for i in items))
    for row, item in enumerate(items):
        assert batch["attention_mask"][row].sum() == len(item["waveform"])
        assert torch.all(batch["waveforms"][row, len(item["waveform"]) :] == 0)


def test_pad_batch_rounds_the_length_up_to_a_multiple_and_masks_only_real_samples():
    clips = [np.ones(5, dtype=np.float32), np.full(11, 2.0, dtype=np.float32)]
    batch, mask = pad_batch(clips, multiple=4)
    assert batch.shape == mask.shape == (2, 12)
    assert mask.sum(dim=1).tolist() == [5, 11]
    assert torch.equal(batch[mask], torch.tensor([1.0] * 5 + [2.0] * 11))
    assert torch.all(batch[~mask] == 0)
    assert pad_batch(clips, multiple=11)[0].shape == (2, 11)  # already a multiple: no padding added


def test_datamodule_gives_padded_batches_and_writes_the_manifest(noise_corpus, tmp_path):
    dm = RavdessDataModule(
        str(noise_corpus),
        cache_dir=str(tmp_path / "cache"),
        split="speaker",
        val_actors=1,
        test_actors=1,
        batch_size=4,
        max_seconds=0.5,
        manifest_path=str(tmp_path / "run" / "split.csv"),
        progress=False,
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["waveforms"].shape[0] == 4 and batch["waveforms"].shape[1] <= 8000
    assert batch["attention_mask"].dtype == torch.bool and batch["labels"].dtype == torch.long
    assert (tmp_path / "run" / "split.csv").is_file()
    val_positions = [i for b in dm.val_dataloader() for i in b["index"].tolist()]
    assert sorted(val_positions) == sorted(dm.split["val"].tolist())


def test_datamodule_from_config_takes_every_data_setting(noise_corpus, tmp_path):
    data = DataConfig(
        root=str(noise_corpus),
        cache_dir=str(tmp_path / "cache"),
        split="fold",
        fold=2,
        test_size=0.3,
        val_actors=1,
        test_actors=3,
        batch_size=5,
        eval_batch_size=7,
        max_seconds=0.25,
        sample_rate=8000,
        normalize=False,
        trim_db=-30.0,
        bucket_batches=3,
    )
    dm = RavdessDataModule.from_config(data, seed=3, sample_rate=16_000)
    assert (dm.root, dm.cache_dir, dm.split_name, dm.fold, dm.seed) == (str(noise_corpus), data.cache_dir, "fold", 2, 3)
    assert dm.split_options == {"test_size": 0.3, "val_actors": 1, "test_actors": 3}
    assert (dm.batch_size, dm.eval_batch_size, dm.bucket_batches, dm.max_samples) == (5, 7, 3, 4000)
    assert dm.settings == PrepareSettings(sample_rate=16_000, normalize=False, trim_db=-30.0)  # replaced rate


def test_synthesize_actors_leaves_an_existing_corpus_alone_and_uses_it(noise_corpus, tmp_path, caplog):
    from ser.data.synth import MARKER

    before = sorted(p.relative_to(noise_corpus) for p in noise_corpus.rglob("*"))
    data = DataConfig(root=str(noise_corpus), cache_dir=str(tmp_path / "cache"), synthesize_actors=2)
    dm = RavdessDataModule.from_config(data, seed=0, progress=False)
    with caplog.at_level("INFO", logger="ser.data.synth"):
        dm.prepare_data()
        dm.setup()
    assert len(dm.corpus.clips) == 4 * 60  # the noise corpus's 4 actors, not 2 synthetic ones
    assert sorted(p.relative_to(noise_corpus) for p in noise_corpus.rglob("*")) == before
    assert not (noise_corpus / MARKER).exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"{noise_corpus} already holds a corpus: using it as it is, not synthesising one (data.synthesize_actors)"
    ]


def test_atomic_writes_of_the_data_pipeline_keep_the_umask(noise_corpus, tmp_path):
    previous = os.umask(0o022)
    try:
        corpus = prepare(noise_corpus, tmp_path / "cache", progress=False)
        manifest = write_manifest(tmp_path / "run" / "split.csv", corpus.clips, make_split(corpus.clips))
    finally:
        os.umask(previous)
    assert corpus.path.stat().st_mode & 0o777 == 0o755
    for path in [manifest, *corpus.path.iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path


# --- ser prepare ---------------------------------------------------------------------------------


def test_ser_prepare_prints_the_summary(noise_corpus, tmp_path, capsys):
    from ser.cli import main

    main(["-q", "prepare", f"data.root={noise_corpus}", f"data.cache_dir={tmp_path / 'cache'}"])
    out = capsys.readouterr().out
    assert "240 clips, 8 emotions, 4 actors" in out and "no file skipped" in out and str(tmp_path / "cache") in out


def test_ser_prepare_keeps_skipped_paths_whole_in_a_file_and_lists_them(tmp_path, capsys):
    # a corpus deep enough that every path is longer than the 80 columns rich assumes off a terminal
    root = write_noise_corpus(tmp_path / ("a-corpus-folder-with-a-long-name-" * 2) / "ravdess", actors=(1, 2))
    spoiled = _spoil(root)
    from ser.cli import main

    main(["-q", "prepare", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"])
    lines = capsys.readouterr().out.splitlines()
    for path in spoiled.values():
        assert len(str(path)) > 80
        assert sum(str(path) in line for line in lines) == 1, path
    listing = next(line for line in lines if line.startswith("the skipped files and their reasons: "))
    table = Path(listing.removeprefix("the skipped files and their reasons: "))
    assert table.parent.parent == tmp_path / "cache" and table.name == "skipped.tsv"
    rows = list(csv.reader(table.open(), delimiter="\t"))
    assert rows[0] == ["location", "reason"]
    assert {row[0] for row in rows[1:]} == {str(p) for p in spoiled.values()} and all(row[1] for row in rows[1:])


def test_ser_prepare_uses_an_existing_corpus_despite_synthesize_actors(noise_corpus, tmp_path, capsys):
    from ser.cli import main

    main(["-q", "prepare", f"data.root={noise_corpus}", f"data.cache_dir={tmp_path}/c", "data.synthesize_actors=2"])
    assert "240 clips, 8 emotions, 4 actors" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, message",
    [("data.rot=3", "rot"), ("data.batch_size=four", "four"), ("experiment=demo", "data.KEY=VALUE")],
)
def test_ser_prepare_refuses_unknown_keys_wrong_types_and_other_groups(override, message, capsys):
    from ser.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", override])
    error = capsys.readouterr().err
    assert exit_info.value.code == 1 and error.startswith("error:") and message in error and error.count("\n") == 1

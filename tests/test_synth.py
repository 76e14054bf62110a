"""The synthetic RAVDESS stand-in: layout, format, voices, emotions, determinism and idempotency."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import espeakng_loader
import numpy as np
import pytest
import soundfile as sf

from ser.data import synth
from ser.data.ravdess import EMOTION_CODES, parse_name
from ser.data.synth import MARKER, synthesize_corpus

ACTORS = (1, 2)  # one male, one female


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize_corpus(
        tmp_path_factory.mktemp("synth") / "ravdess", actors=list(ACTORS), seed=0, progress=False, workers=1
    )


def wavs(root: Path) -> list[Path]:
    return sorted(root.glob("Actor_*/*.wav"))


def load(root: Path, stem: str) -> np.ndarray:
    samples, _ = sf.read(root / f"Actor_{stem[-2:]}" / f"{stem}.wav")
    return samples


def speech_span(x: np.ndarray) -> np.ndarray:
    """The part of a clip between the first and last 10 ms window louder than a tenth of the loudest."""
    envelope = np.convolve(np.abs(x), np.ones(480) / 480, "same")
    loud = np.flatnonzero(envelope > 0.1 * envelope.max())
    return x[loud[0] : loud[-1]]


def rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-12)


def median_f0(x: np.ndarray, rate: int = 48_000) -> float:
    """Median F0 (Hz) of the voiced 40 ms frames, from the normalised autocorrelation peak in 60-400 Hz."""
    x, rate = x[::4], rate // 4  # 12 kHz is plenty for F0
    frame, lo, hi = 480, rate // 400, rate // 60
    f0 = []
    for start in range(0, len(x) - frame - hi, frame // 4):
        window = x[start : start + frame + hi]
        head = window[:frame]
        if rms_db(head) < -40:
            continue
        corr = np.lib.stride_tricks.sliding_window_view(window, frame)[lo:hi] @ head / (head @ head)
        if corr.max() > 0.6:
            f0.append(rate / (lo + corr.argmax()))
    return float(np.median(f0))


def test_tree_and_names(corpus):
    files = wavs(corpus)
    assert {p.parent.name for p in files} == {f"Actor_{a:02d}" for a in ACTORS}
    for actor in ACTORS:
        assert len(list((corpus / f"Actor_{actor:02d}").glob("*.wav"))) == 60
    expected = {
        f"03-01-{e:02d}-{i:02d}-{s:02d}-{r:02d}-{a:02d}.wav"
        for a, e, i, s, r in itertools.product(ACTORS, EMOTION_CODES, (1, 2), (1, 2), (1, 2))
        if not (e == 1 and i == 2)
    }
    assert {p.name for p in files} == expected
    for path in files:
        name = parse_name(path.name)
        assert (name.modality, name.vocal_channel) == (3, 1)
        assert path.parent.name == f"Actor_{name.actor:02d}"
    assert not list(corpus.glob("Actor_*/.*")), "temporary files were left behind"


def test_format_is_ravdess(corpus):
    for path in wavs(corpus):
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 48_000, 1)
        assert 1.5 < info.duration < 7.0


def test_neutral_has_no_strong_intensity(corpus):
    names = [parse_name(p.name) for p in wavs(corpus)]
    assert not [n for n in names if n.emotion == "neutral" and n.intensity == 2]
    for emotion in set(EMOTION_CODES.values()) - {"neutral"}:
        assert {n.intensity for n in names if n.emotion == emotion} == {1, 2}


def test_even_actor_is_female(corpus):
    f0 = {}
    for actor in ACTORS:
        stems = [f"03-01-{e:02d}-01-{s:02d}-{r:02d}-{actor:02d}" for e in (1, 2) for s in (1, 2) for r in (1, 2)]
        f0[actor] = np.median([median_f0(load(corpus, stem)) for stem in stems])
    assert 60 < f0[1] < 160, f0
    assert f0[2] > 1.4 * f0[1], f0


def test_emotions_differ_by_prosody(corpus):
    for actor, statement, repetition in itertools.product(ACTORS, (1, 2), (1, 2)):
        for intensity in (1, 2):
            angry = speech_span(load(corpus, f"03-01-05-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}"))
            sad = speech_span(load(corpus, f"03-01-04-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}"))
            assert rms_db(angry) > rms_db(sad) + 6
            assert len(angry) < 0.8 * len(sad)  # angry speech is faster
        # strong intensity exaggerates: strong sad is slower and quieter than normal sad
        sad_normal = speech_span(load(corpus, f"03-01-04-01-{statement:02d}-{repetition:02d}-{actor:02d}"))
        sad_strong = speech_span(load(corpus, f"03-01-04-02-{statement:02d}-{repetition:02d}-{actor:02d}"))
        assert len(sad_strong) > len(sad_normal) and rms_db(sad_strong) < rms_db(sad_normal)


def test_repetitions_are_not_copies(corpus):
    for path in (corpus / "Actor_01").glob("*-01-01.wav"):
        twin = path.with_name(path.name.replace("-01-01.wav", "-02-01.wav"))
        assert path.read_bytes() != twin.read_bytes()


def test_speech_is_surrounded_by_near_silence(corpus):
    for path in wavs(corpus)[::7]:
        x, rate = sf.read(path)
        edge = int(0.45 * rate)
        assert rms_db(x[:edge]) < -55 and rms_db(x[-edge:]) < -55, path.name
        assert rms_db(x[:edge]) > -90, "the silence should carry faint noise, like a real recording"
        assert rms_db(speech_span(x)) > -45, path.name
        assert np.abs(x).max() < 0.9


@pytest.mark.slow
def test_same_seed_same_bytes_in_worker_processes(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_PARALLEL_FROM", 0)  # use the process pool even for one actor
    again = synthesize_corpus(tmp_path / "again", actors=[2], seed=0, progress=False, workers=2)
    for path in wavs(again):
        assert path.read_bytes() == (corpus / path.relative_to(again)).read_bytes(), path.name


def test_other_seed_other_audio(corpus, tmp_path):
    other = synthesize_corpus(tmp_path / "other", actors=[1], seed=1, progress=False, workers=1)
    stem = "Actor_01/03-01-03-01-01-01-01.wav"
    assert (other / stem).read_bytes() != (corpus / stem).read_bytes()


def test_second_call_rewrites_nothing(corpus):
    before = {p: p.stat().st_mtime_ns for p in wavs(corpus)}
    assert synthesize_corpus(corpus, actors=list(ACTORS), seed=0, progress=False, workers=1) == corpus
    assert {p: p.stat().st_mtime_ns for p in wavs(corpus)} == before
    assert json.loads((corpus / MARKER).read_text()) == {"actors": list(ACTORS), "seed": 0, "version": synth.VERSION}


def test_missing_file_is_remade_alone_and_identical(corpus, tmp_path):
    root = shutil.copytree(corpus, tmp_path / "c")
    lost = root / "Actor_02" / "03-01-06-02-02-01-02.wav"
    lost.unlink()
    before = {p: p.stat().st_mtime_ns for p in wavs(root)}
    synthesize_corpus(root, actors=list(ACTORS), seed=0, progress=False, workers=1)
    assert lost.read_bytes() == (corpus / lost.relative_to(root)).read_bytes()
    assert {p: p.stat().st_mtime_ns for p in wavs(root) if p != lost} == before


def test_other_parameters_replace_the_corpus(corpus, tmp_path):
    root = shutil.copytree(corpus, tmp_path / "c")
    synthesize_corpus(root, actors=[2], seed=0, progress=False, workers=1)
    assert {p.parent.name for p in wavs(root)} == {"Actor_02"}
    assert not (root / "Actor_01").exists()
    assert json.loads((root / MARKER).read_text())["actors"] == [2]


def test_refuses_to_overwrite_foreign_wavs(tmp_path):
    real = tmp_path / "real" / "Actor_01"
    real.mkdir(parents=True)
    sf.write(real / "03-01-01-01-01-01-01.wav", np.zeros(4800), 48_000, subtype="PCM_16")
    with pytest.raises(FileExistsError):
        synthesize_corpus(tmp_path / "real", actors=[1], progress=False, workers=1)


@pytest.mark.parametrize("actors", [0, 25, [], [0, 1], [24, 25]])
def test_bad_actors(tmp_path, actors):
    with pytest.raises(ValueError):
        synthesize_corpus(tmp_path, actors=actors, progress=False)


def test_voices_exist_and_alternate_gender():
    # eSpeak silently falls back to its default voice for an unknown variant: check the files.
    variants = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    for actor in range(1, 25):
        voice = synth.actor_voice(actor)
        assert (variants / voice.variant).is_file(), voice.variant
        assert voice.gender == ("male" if actor % 2 else "female")


def test_strong_intensity_exaggerates_every_cue():
    for emotion in set(synth.STYLES) - {"neutral"}:
        normal, strong = synth.emotion_style(emotion, 1), synth.emotion_style(emotion, 2)
        assert abs(np.log(strong.rate)) > abs(np.log(normal.rate)) or normal.rate == 1
        assert abs(strong.pitch) > abs(normal.pitch) and abs(strong.gain_db) > abs(normal.gain_db)
    with pytest.raises(ValueError):
        synth.emotion_style("neutral", 2)

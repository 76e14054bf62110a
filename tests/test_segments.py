"""Emotions over time: silero-vad segments of a recording built from synthetic clips, scored as ``ser predict``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser.cli import main
from ser.inference import load_model, predict
from ser.segments import Segment, SegmentSettings, merge_neighbours, segment_files, speech_spans

from .helpers import build_recording, require, run_python, save_checkpoint, tiny_module

require("silero_vad", 'pip install -e ".[demo]"')

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
    pytest.mark.filterwarnings("ignore:.*litlogger.*"),
]

TOLERANCE = 0.25  # seconds between a segment's bounds and the speech of its clip


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, list[tuple[float, float, str]]]:
    path = tmp_path_factory.mktemp("recording") / "three-takes.wav"
    return path, build_recording(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tiny_module(), tmp_path_factory.mktemp("model") / "tiny.ckpt")


def test_segments_find_each_clip_and_score_as_the_stretch_alone(recording, checkpoint, tmp_path):
    path, truth = recording
    model = load_model(checkpoint)
    # A window shorter than the clips: every segment is scored in several windows, as predict does.
    segments = list(segment_files(model, [path], window_seconds=0.8, hop_seconds=0.4))
    assert [s.error for s in segments] == [None] * len(truth)
    samples, rate = sf.read(path, dtype="float32")
    for segment, (start, end, _) in zip(segments, truth):
        assert abs(segment.start - start) <= TOLERANCE and abs(segment.end - end) <= TOLERANCE, (segment, start, end)
        alone = tmp_path / f"{segment.start:.3f}.wav"
        sf.write(alone, samples[round(segment.start * rate) : round(segment.end * rate)], rate, subtype="FLOAT")
        [expected] = predict(model, [alone], window_seconds=0.8, hop_seconds=0.4)
        assert len(expected.windows) > 1
        assert segment.label == expected.label
        np.testing.assert_allclose(
            list(segment.probabilities.values()), list(expected.probabilities.values()), atol=1e-5
        )
        assert abs(sum(segment.probabilities.values()) - 1) < 1e-5


def test_speech_spans_follow_min_speech_min_silence_and_pad():
    frame = 512 / 16_000
    # speech 0.32 s, pause 0.16 s, speech 0.32 s, pause 0.96 s, a blip of 0.064 s, silence
    probabilities = np.array([0.0] * 10 + [0.9] * 10 + [0.1] * 5 + [0.9] * 10 + [0.1] * 30 + [0.9] * 2 + [0.0] * 10)
    duration = len(probabilities) * frame
    spans = speech_spans(probabilities, SegmentSettings(min_silence=0.3, min_speech=0.25, pad=0.0), duration)
    assert np.allclose(spans, [(10 * frame, 35 * frame)])  # the short pause joins, the blip is dropped
    spans = speech_spans(probabilities, SegmentSettings(min_silence=0.1, min_speech=0.0, pad=0.0), duration)
    assert np.allclose(spans, [(10 * frame, 20 * frame), (25 * frame, 35 * frame), (65 * frame, 67 * frame)])
    padded = speech_spans(probabilities, SegmentSettings(min_silence=0.1, min_speech=0.0, pad=0.5), duration)
    # the pad stops halfway into a pause shorter than two pads, and at the ends of the recording
    assert np.allclose(padded[0], (0.0, 22.5 * frame)) and np.allclose(padded[1][0], 22.5 * frame)
    assert np.isclose(padded[2][1], duration)


def test_merge_joins_neighbours_of_one_emotion_weighted_by_duration():
    labels = ["a", "b"]
    rows = [
        Segment("f.wav", 0.0, 1.0, "a", 0.9, {"a": 0.9, "b": 0.1}),
        Segment("f.wav", 2.0, 5.0, "a", 0.6, {"a": 0.6, "b": 0.4}),
        Segment("f.wav", 6.0, 7.0, "b", 0.8, {"a": 0.2, "b": 0.8}),
        Segment("g.wav", 0.0, 1.0, "b", 0.7, {"a": 0.3, "b": 0.7}),
    ]
    merged = merge_neighbours(rows, labels)
    assert [(s.path, s.start, s.end, s.label) for s in merged] == [
        ("f.wav", 0.0, 5.0, "a"),
        ("f.wav", 6.0, 7.0, "b"),
        ("g.wav", 0.0, 1.0, "b"),
    ]
    assert merged[0].probabilities["a"] == pytest.approx(0.9 * 0.25 + 0.6 * 0.75)


def test_recording_read_in_small_blocks_gives_the_same_segments(recording, checkpoint, monkeypatch):
    from ser import segments as module

    path, _ = recording
    whole = list(segment_files(checkpoint, [path]))
    monkeypatch.setattr(module, "BLOCK_SECONDS", 1)
    monkeypatch.setattr(module, "GROUP_SECONDS", 0.1)
    blocks = list(segment_files(checkpoint, [path]))
    assert len(blocks) == len(whole)
    for a, b in zip(whole, blocks):
        assert abs(a.start - b.start) <= 0.04 and abs(a.end - b.end) <= 0.04
        assert a.label == b.label


def test_cli_segments_csv_json_plot_and_bad_files(recording, checkpoint, tmp_path, capsys):
    path, truth = recording
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    plot = tmp_path / "timeline.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "predict", str(checkpoint), str(path), str(broken), "--segments", "--csv", "--plot", str(plot)])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    labels = load_model(checkpoint).labels
    assert list(rows[0]) == ["file", "start", "end", "emotion", "probability", *labels, "error"]
    good = [r for r in rows if r["file"] == str(path)]
    assert len(good) == len(truth) and all(r["error"] == "" for r in good)
    assert all(r["emotion"] in labels for r in good)
    assert all(abs(float(r["probability"]) - max(float(r[label]) for label in labels)) < 1e-6 for r in good)
    [bad] = [r for r in rows if r["file"] == str(broken)]
    assert "cannot be decoded" in bad["error"] and f"error: {broken}: cannot be decoded" in err
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"

    main(["-q", "predict", str(checkpoint), str(path), "--segments", "--json", "--merge", "--min-silence", "0.3"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 1 <= len(lines) <= len(truth)
    assert lines[0]["path"] == str(path) and set(lines[0]["probabilities"]) == set(labels)
    assert all(a["end"] <= b["start"] for a, b in zip(lines, lines[1:]))
    assert all(a["label"] != b["label"] for a, b in zip(lines, lines[1:]))  # merged neighbours


def test_segment_options_need_segments(checkpoint, recording, capsys):
    with pytest.raises(SystemExit, match="--csv.*--segments"):
        main(["predict", str(checkpoint), str(recording[0]), "--csv"])
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "predict", str(checkpoint), str(recording[0]), "--segments", "--pad", "-1"])
    assert "--pad -1.0 must be" in capsys.readouterr().err + str(exit_info.value)


def test_json_lines_are_written_as_files_are_scored(checkpoint, tmp_path, capsys, monkeypatch):
    """A crash at a later group of files keeps every result printed before it."""
    from ser import inference

    from .test_predict import noise

    for i in range(5):
        sf.write(tmp_path / f"clip{i}.wav", noise(0.5, 16_000, seed=i), 16_000)
    monkeypatch.setattr(inference, "FILES_PER_CHUNK", 2)
    real_score, calls = inference.score_waveforms, []

    def crash_on_the_third_group(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise RuntimeError("out of memory at file 5")
        return real_score(*args, **kwargs)

    monkeypatch.setattr(inference, "score_waveforms", crash_on_the_third_group)
    with pytest.raises(RuntimeError, match="file 5"):
        main(["-q", "predict", str(checkpoint), str(tmp_path), "--json"])
    printed = [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()]
    assert printed == [str(tmp_path / f"clip{i}.wav") for i in range(4)]


@pytest.mark.slow
def test_loading_the_detector_keeps_torchs_threads(tmp_path):
    # a fresh interpreter: silero_vad's import changes the threads once per process
    code = (
        "import torch; torch.set_num_threads(2); from ser.segments import load_vad; load_vad(); "
        "print(torch.get_num_threads())"
    )
    result = run_python(["-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "2"

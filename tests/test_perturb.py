"""Perturbations for robustness tests: parsing, what each does to a clip, and the same figures on a rerun."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ser.data.perturb import PerturbError, parse_perturbations

from .helpers import tiny_module, write_noise_corpus

RATE = 16_000


def speech_like(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_specs_parse_into_one_perturbation_per_value():
    parsed = parse_perturbations(["noise:snr=20,10,5", "reverb", "speed:factor=0.9", "gain:db=-6"])
    assert [p.label for p in parsed] == [
        "noise:snr=20",
        "noise:snr=10",
        "noise:snr=5",
        "reverb:rt60=0.5",
        "speed:factor=0.9",
        "gain:db=-6",
    ]
    for spec, message in [
        ("hiss", "no perturbation 'hiss'"),
        ("noise:db=3", "noise takes snr=VALUE"),
        ("noise:snr=loud", "not a list of numbers"),
        ("speed:factor=0", "must be above 0"),
    ]:
        with pytest.raises(PerturbError, match=message) as error:
            parse_perturbations([spec])
        assert "\n" not in str(error.value)


def test_each_perturbation_does_what_it_says_and_is_the_same_on_a_rerun():
    clean = speech_like()
    noise, reverb, speed, gain = parse_perturbations(["noise:snr=10", "reverb", "speed:factor=1.25", "gain:db=-6"])
    noisy = noise.apply(clean, RATE, seed=0, index=3)
    snr = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
    assert snr == pytest.approx(10.0, abs=0.01)
    np.testing.assert_array_equal(noisy, noise.apply(clean, RATE, seed=0, index=3))  # a rerun: the same audio
    assert not np.allclose(noisy, noise.apply(clean, RATE, seed=0, index=4))  # another clip: other noise
    assert not np.allclose(noisy, noise.apply(clean, RATE, seed=1, index=3))  # another seed: other noise
    reverberant = reverb.apply(clean, RATE, seed=0, index=3)
    assert reverberant.shape == clean.shape and not np.allclose(reverberant, clean)
    assert np.sum(reverberant**2) == pytest.approx(np.sum(clean**2), rel=1e-3)
    np.testing.assert_array_equal(reverberant, reverb.apply(clean, RATE, seed=0, index=3))
    assert len(speed.apply(clean, RATE, 0, 0)) == len(clean) * 4 // 5
    np.testing.assert_allclose(gain.apply(clean, RATE, 0, 0), clean * 10 ** (-6 / 20), rtol=1e-6)


@pytest.fixture(scope="module")
def small_ravdess(tmp_path_factory):
    return write_noise_corpus(tmp_path_factory.mktemp("corpus") / "ravdess", actors=(1, 2), max_seconds=0.4)


@pytest.mark.slow  # seconds of in-process training; the quick loop tests its parts on their own
def test_evaluate_reports_the_clean_and_perturbed_scores_and_the_drop_the_same_on_a_rerun(
    small_ravdess, tmp_path, capsys
):
    from ser.cli import main
    from ser.evaluate import evaluate

    overrides = [f"data.root={small_ravdess}", f"data.cache_dir={tmp_path / 'cache'}"]
    module = tiny_module(seed=1)
    runs = [
        evaluate(module, overrides, out_dir=tmp_path / f"eval{i}", perturb=["noise:snr=10,0", "gain"], progress=False)
        for i in range(2)
    ]
    first, second = runs
    assert list(first["perturbed"]) == ["noise:snr=10", "noise:snr=0", "gain:db=-6"]
    assert first["perturbed"] == second["perturbed"]  # seeded: a rerun gives the same figures
    for values in first["perturbed"].values():
        for name in ("acc", "uar", "f1"):
            assert values[f"drop/{name}"] == pytest.approx(first[f"test/{name}"] - values[name])
    assert json.loads((tmp_path / "eval0" / "metrics.json").read_text())["perturbed"] == first["perturbed"]

    # ser evaluate prints the clean score, each perturbed one and the drop
    checkpoint = tmp_path / "model.ckpt"
    from .helpers import save_checkpoint

    save_checkpoint(module, checkpoint)
    main(["-q", "evaluate", str(checkpoint), *overrides, "--out", str(tmp_path / "cli"), "--perturb", "noise:snr=10"])
    printed = capsys.readouterr().out
    assert "UA drop" in printed and "noise:snr=10" in printed and "clean" in printed
    saved = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    drop = saved["perturbed"]["noise:snr=10"]["drop/uar"]
    assert f"{drop:+.4f}" in printed

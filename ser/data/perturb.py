"""Perturbations of prepared clips for robustness tests: noise, reverberation, speed and gain.

    noise:snr=10        white noise at 10 dB SNR (torchaudio.functional.add_noise)
    reverb:rt60=0.5     a room: an exponentially decaying noise impulse response, applied by fftconvolve
    speed:factor=1.1    played faster (resampled; pitch moves with it)
    gain:db=-6          louder or quieter

A spec is ``name`` or ``name:key=value``; ``noise:snr=20,10,5`` gives one perturbation per value.
Every random draw is seeded by the seed, the perturbation and the clip's index, so a rerun gives the same
audio. Clips are ``(T,)`` float32 at the cache's sample rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError

DEFAULTS = {"noise": ("snr", 10.0), "reverb": ("rt60", 0.5), "speed": ("factor", 1.1), "gain": ("db", -6.0)}


class PerturbError(UserError, ValueError):
    """A ``--perturb`` spec that names no perturbation or gives a bad value."""


@dataclass(frozen=True)
class Perturbation:
    """One perturbation with its one parameter; ``apply`` gives the perturbed clip (T',) float32."""

    name: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.name}:{DEFAULTS[self.name][0]}={self.value:g}"

    def apply(self, waveform: np.ndarray, sample_rate: int, seed: int, index: int) -> np.ndarray:
        import torchaudio.functional as F

        clip = torch.as_tensor(np.array(waveform, dtype=np.float32))
        # the same generator draws for the same seed, perturbation and clip, whatever else was scored before
        generator = torch.Generator().manual_seed(hash_seed(seed, self.label, index))
        if self.name == "noise":
            noise = torch.randn(clip.shape, generator=generator)
            out = F.add_noise(clip[None], noise[None], torch.tensor([self.value]))[0]
        elif self.name == "reverb":
            length = max(1, int(self.value * sample_rate))
            decay = torch.exp(-6.9 * torch.arange(length) / length)  # -60 dB at rt60
            response = torch.randn(length, generator=generator) * decay
            response[0] = 1.0  # the direct sound
            response = response / response.norm()
            out = F.fftconvolve(clip, response)[: len(clip)]
            out = out * (clip.norm() / out.norm().clamp_min(1e-8))  # the clean clip's energy
        elif self.name == "speed":
            out = F.resample(clip, int(round(sample_rate * self.value)), sample_rate)
        else:
            out = clip * 10 ** (self.value / 20)
        return out.numpy().astype(np.float32)


def hash_seed(seed: int, label: str, index: int) -> int:
    import zlib

    return zlib.crc32(f"{seed}|{label}|{index}".encode())


def parse_perturbations(specs: list[str] | tuple[str, ...]) -> list[Perturbation]:
    """``["noise:snr=20,10", "reverb"]`` -> the perturbations, in order.

    Raises:
        PerturbError: an unknown name or key, or a value that is not a number.
    """
    result = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        if name not in DEFAULTS:
            raise PerturbError(f"--perturb {spec}: no perturbation {name!r}; choose one of {', '.join(DEFAULTS)}")
        key, default = DEFAULTS[name]
        values = [default]
        if rest:
            given, _, text = rest.partition("=")
            if given != key or not text:
                raise PerturbError(
                    f"--perturb {spec}: {name} takes {key}=VALUE[,VALUE...], e.g. {name}:{key}={default:g}"
                )
            try:
                values = [float(v) for v in text.split(",")]
            except ValueError:
                raise PerturbError(f"--perturb {spec}: {text!r} is not a list of numbers") from None
        if name in ("reverb", "speed") and any(v <= 0 for v in values):
            raise PerturbError(f"--perturb {spec}: {key} must be above 0")
        result.extend(Perturbation(name, v) for v in values)
    return result


def transform(perturbation: Perturbation, sample_rate: int, seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """``(waveform (T,), clip index) -> perturbed waveform``, for :func:`ser.evaluate.score_clips`."""
    return lambda waveform, index: perturbation.apply(waveform, sample_rate, seed, index)

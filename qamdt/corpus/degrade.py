"""Quality degradations of graded severity and the simulated reference quality.

Every degradation takes a clean clip, a severity ``s`` in [0, 1] and a seeded generator,
and returns the degraded clip plus the physical parameters it used, so that a manifest
row records exactly what was done. The simulated reference quality of a clip is

    Q = 1 + 4 * prod_k (1 - w_k * s_k)

over the degradations ``k`` applied to it, where ``w_k`` (``IMPAIRMENT_WEIGHTS``) says how
much a degradation of full severity hurts on its own. A clean clip has Q = 5; a single
degradation at full severity with ``w_k = 1`` would give Q = 1; several degradations
compound multiplicatively. Q is simulated from the recipe, not rated by listeners.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import signal

EPS = 1e-12

# How much a degradation at full severity lowers quality on its own (1 = down to Q = 1).
IMPAIRMENT_WEIGHTS: dict[str, float] = {
    "noise": 0.95,
    "bandlimit": 0.75,
    "clipping": 0.85,
    "quantize": 0.9,
    "crackle_hum": 0.8,
    "reverb": 0.7,
}


@dataclasses.dataclass(frozen=True)
class DegradationSettings:
    """How often and how hard clips are degraded.

    Attributes:
        clean_fraction: Share of clips left untouched (reference quality 5).
        count_weights: Relative odds of applying 1, 2, 3, ... degradations to a degraded clip.
        min_severity: Lower end of the uniform severity draw.
        max_severity: Upper end of the uniform severity draw.
        kinds: Degradations to choose from (keys of ``DEGRADATIONS``).
    """

    clean_fraction: float = 0.25
    count_weights: tuple[float, ...] = (0.5, 0.35, 0.15)
    min_severity: float = 0.1
    max_severity: float = 1.0
    kinds: tuple[str, ...] = tuple(IMPAIRMENT_WEIGHTS)

    def __post_init__(self):
        if not 0.0 <= self.clean_fraction <= 1.0:
            raise ValueError("clean_fraction must be in [0, 1]")
        if not 0.0 <= self.min_severity <= self.max_severity <= 1.0:
            raise ValueError("need 0 <= min_severity <= max_severity <= 1")
        unknown = sorted(set(self.kinds) - set(DEGRADATIONS))
        if unknown:
            raise ValueError(f"unknown degradation(s) {unknown}; known: {sorted(DEGRADATIONS)}")
        if not self.count_weights or len(self.count_weights) > len(self.kinds):
            raise ValueError("count_weights needs between 1 and len(kinds) entries")


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + EPS))


def _pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f power spectrum, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(freqs), n)


def add_noise(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator):
    """Additive white or pink noise at an SNR from 40 dB (s = 0) down to 2 dB (s = 1)."""
    snr_db = 40.0 - 38.0 * severity
    color = "pink" if rng.random() < 0.5 else "white"
    noise = _pink_noise(x.size, rng) if color == "pink" else rng.standard_normal(x.size)
    noise *= _rms(x) / (_rms(noise) * 10.0 ** (snr_db / 20.0))
    return x + noise, {"snr_db": round(snr_db, 2), "color": color}


def band_limit(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator):
    """Low-pass from 8 kHz (s = 0) down to 1 kHz (s = 1), with a high-pass that rises with s."""
    cutoff = 8000.0 * (1.0 / 8.0) ** severity
    cutoff = min(cutoff, 0.45 * sr)
    highpass = 40.0 + 360.0 * severity * rng.random()
    sos = signal.butter(8, [highpass, cutoff], btype="bandpass", fs=sr, output="sos")
    return signal.sosfiltfilt(sos, x), {
        "lowpass_hz": round(cutoff, 1),
        "highpass_hz": round(highpass, 1),
    }


def hard_clip(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator):
    """Overdrive into a hard clipper: the clip level falls to 2 dB (s = 0) .. 26 dB under peak."""
    drive_db = 2.0 + 24.0 * severity
    level = np.max(np.abs(x)) * 10.0 ** (-drive_db / 20.0)
    return np.clip(x, -level, level), {"clip_db_below_peak": round(drive_db, 2)}


def quantize(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator):
    """Codec-like damage: coarse mu-law or linear quantisation and sample-rate reduction.

    Bit depth falls from 12 (s = 0) to 3 bits (s = 1); with probability 0.5 the signal is
    also held at a reduced rate (down to sr / 6) without anti-aliasing, as cheap codecs do.
    """
    bits = int(round(12 - 9 * severity))
    levels = 2 ** (bits - 1)
    peak = np.max(np.abs(x)) + EPS
    y = x / peak
    companding = "mu-law" if rng.random() < 0.5 else "linear"
    if companding == "mu-law":
        mu = 255.0
        y = np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)
        y = np.round(y * levels) / levels
        y = np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu
    else:
        y = np.round(y * levels) / levels
    hold = 1
    if rng.random() < 0.5:
        hold = 1 + int(round(5 * severity))
        y = np.repeat(y[::hold], hold)[: y.size]
    return y * peak, {"bits": bits, "companding": companding, "sample_hold": hold}


def crackle_hum(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator):
    """Vinyl-like crackle (random clicks) plus mains hum with harmonics.

    Click rate rises from 2 to 200 per second; hum level from -50 dB to -12 dB relative to
    the music's RMS; mains frequency 50 or 60 Hz.
    """
    n = x.size
    level = _rms(x)
    rate = 2.0 * 100.0**severity
    clicks = np.zeros(n)
    count = rng.poisson(rate * n / sr)
    where = rng.integers(0, n, size=count)
    clicks[where] = rng.standard_normal(count) * level * (2.0 + 6.0 * rng.random(count))
    kernel = np.exp(-np.arange(int(0.002 * sr)) / (0.0004 * sr))
    clicks = signal.fftconvolve(clicks, kernel)[:n]
    mains = 50.0 if rng.random() < 0.5 else 60.0
    t = np.arange(n) / sr
    harmonics = np.array([1.0, 2.0, 3.0, 5.0])
    phases = rng.uniform(0, 2 * np.pi, size=harmonics.size)
    hum = np.sin(2 * np.pi * mains * np.outer(harmonics, t) + phases[:, None]).T @ (1 / harmonics)
    hum_db = -50.0 + 38.0 * severity
    hum *= level * 10.0 ** (hum_db / 20.0) / _rms(hum)
    return x + clicks + hum, {
        "clicks_per_s": round(rate, 1),
        "hum_db": round(hum_db, 2),
        "mains_hz": mains,
    }


def reverberate(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator):
    """Room reverb: exponentially decaying noise impulse response.

    RT60 grows from 0.3 s (s = 0) to 4 s (s = 1) and the wet share from 0.15 to 0.85.
    """
    rt60 = 0.3 + 3.7 * severity
    wet = 0.15 + 0.7 * severity
    length = int(min(rt60, 4.0) * sr)
    t = np.arange(length) / sr
    impulse = rng.standard_normal(length) * np.exp(-6.91 * t / rt60)
    impulse /= np.sqrt(np.sum(impulse**2)) + EPS
    tail = signal.fftconvolve(x, impulse)[: x.size]
    tail *= _rms(x) / _rms(tail)
    return (1.0 - wet) * x + wet * tail, {"rt60_s": round(rt60, 2), "wet": round(wet, 3)}


DEGRADATIONS: dict[str, Callable] = {
    "noise": add_noise,
    "bandlimit": band_limit,
    "clipping": hard_clip,
    "quantize": quantize,
    "crackle_hum": crackle_hum,
    "reverb": reverberate,
}


def reference_quality(applied: list[dict]) -> float:
    """Simulated reference quality (1-5) of a clip from the degradations applied to it.

    Args:
        applied: Entries with ``type`` and ``severity`` keys, as ``degrade_clip`` records.

    Returns:
        ``1 + 4 * prod(1 - w_type * severity)``, rounded to 4 decimals.
    """
    remaining = 1.0
    for item in applied:
        remaining *= 1.0 - IMPAIRMENT_WEIGHTS[item["type"]] * float(item["severity"])
    return round(1.0 + 4.0 * remaining, 4)


def degrade_clip(
    x: np.ndarray, sr: int, rng: np.random.Generator, settings: DegradationSettings
) -> tuple[np.ndarray, list[dict]]:
    """Draws and applies the degradations for one clip.

    Args:
        x: Clean mono clip (float).
        sr: Its sample rate.
        rng: Generator seeded for this clip, so the result is reproducible.
        settings: Rates and severities.

    Returns:
        The degraded clip (peak at most 1) and the list of applied degradations, each
        ``{"type", "severity", "params"}`` in the order applied.
    """
    x = np.asarray(x, dtype=np.float64)
    if rng.random() < settings.clean_fraction:
        return x, []
    weights = np.asarray(settings.count_weights, dtype=np.float64)
    count = 1 + int(rng.choice(weights.size, p=weights / weights.sum()))
    kinds = [str(k) for k in rng.choice(settings.kinds, size=count, replace=False)]
    # Reverb acts on the room, band limits and quantisation on the channel: apply in the
    # order a recording chain would meet them.
    order = ["reverb", "noise", "crackle_hum", "bandlimit", "clipping", "quantize"]
    kinds.sort(key=order.index)
    applied = []
    for kind in kinds:
        severity = round(float(rng.uniform(settings.min_severity, settings.max_severity)), 4)
        x, params = DEGRADATIONS[kind](x, sr, severity, rng)
        applied.append({"type": kind, "severity": severity, "params": params})
    peak = np.max(np.abs(x))
    if peak > 0.99:
        x = x * (0.99 / peak)
    return x, applied

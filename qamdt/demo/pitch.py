"""Is it music or noise? Pitch confidence of audio against noise with the same spectrum.

The pitch-confidence measure is the periodicity of the normalised autocorrelation (the
"clarity" of McLeod's pitch method): per frame, the largest normalised correlation of
the signal with itself shifted by one pitch period, over the periods of ``fmin..fmax``,
averaged over the frames that are not silent. A held note scores near 1; noise scores by
how narrow its band is, never by the presence of partials.

The control for each clip is white noise shaped by the clip's long-term magnitude
spectrum, smoothed over ``envelope_hz`` so the harmonic partials are flattened out, and
scaled to the clip's RMS: the same spectral envelope and loudness without the pitch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FRAME_SECONDS = 0.046
HOP_SECONDS = 0.023
# Frames this far (in dB) below the loudest frame count as silence.
SILENCE_DB = 40.0


def _frames(wave: np.ndarray, size: int, hop: int) -> np.ndarray:
    if wave.size < size:
        wave = np.pad(wave, (0, size - wave.size))
    count = 1 + (wave.size - size) // hop
    index = np.arange(size)[None, :] + hop * np.arange(count)[:, None]
    return wave[index]


def pitch_confidence(
    wave: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 500.0
) -> float:
    """Mean per-frame periodicity of a mono waveform, in [0, 1].

    Args:
        wave: Mono samples.
        sample_rate: Their rate in Hz.
        fmin: Lowest pitch searched (sets the longest lag).
        fmax: Highest pitch searched (sets the shortest lag).

    Returns:
        The mean over non-silent frames of the largest normalised autocorrelation at a lag
        between ``1/fmax`` and ``1/fmin`` seconds; 0 for silence.
    """
    wave = np.asarray(wave, dtype=np.float64).ravel()
    window = int(round(FRAME_SECONDS * sample_rate))
    max_lag = int(np.ceil(sample_rate / fmin))
    min_lag = max(1, int(np.floor(sample_rate / fmax)))
    # Each frame holds the window and the longest lag after it.
    frames = _frames(wave, window + max_lag, int(round(HOP_SECONDS * sample_rate)))
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = np.sum(frames[:, :window] ** 2, axis=1)
    if not np.any(energy > 0):
        return 0.0
    loud = energy >= energy.max() * 10 ** (-SILENCE_DB / 10)
    frames, energy = frames[loud], energy[loud]
    size = 1 << int(np.ceil(np.log2(2 * frames.shape[1])))
    head = np.zeros_like(frames)
    head[:, :window] = frames[:, :window]
    # Cross-correlation of the window with the frame at every lag.
    spectrum = np.conj(np.fft.rfft(head, size)) * np.fft.rfft(frames, size)
    correlation = np.fft.irfft(spectrum, size)[:, : max_lag + 1]
    squares = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames**2, axis=1)], 1)
    lags = np.arange(max_lag + 1)
    shifted = squares[:, lags + window] - squares[:, lags]
    normalised = correlation / np.sqrt(np.maximum(energy[:, None] * shifted, 1e-20))
    return float(np.clip(normalised[:, min_lag:].max(axis=1), 0.0, 1.0).mean())


def shaped_noise(
    wave: np.ndarray, sample_rate: int, envelope_hz: float = 500.0, seed: int = 0
) -> np.ndarray:
    """White noise with a clip's smoothed long-term magnitude spectrum and its RMS.

    Args:
        wave: Mono samples of the clip.
        sample_rate: Their rate in Hz.
        envelope_hz: Width of the moving average over frequency that smooths the
            spectrum (wider than the spacing of the partials, so they do not survive).
        seed: Seed of the noise.

    Returns:
        Noise samples as long as ``wave`` (float32).
    """
    wave = np.asarray(wave, dtype=np.float64).ravel()
    magnitude = np.abs(np.fft.rfft(wave))
    bin_hz = sample_rate / max(wave.size, 1)
    width = max(1, int(round(envelope_hz / bin_hz)))
    kernel = np.ones(width) / width
    envelope = np.convolve(magnitude, kernel, mode="same")
    rng = np.random.default_rng(seed)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(wave.size)) * envelope, wave.size)
    rms = np.sqrt(np.mean(wave**2))
    noise_rms = np.sqrt(np.mean(noise**2))
    if noise_rms > 0:
        noise *= rms / noise_rms
    return noise.astype(np.float32)


def music_vs_noise(
    waves: Sequence[np.ndarray],
    sample_rate: int,
    fmin: float = 60.0,
    fmax: float = 500.0,
    envelope_hz: float = 500.0,
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean pitch confidence of clips and of their spectrum-matched noise.

    Args:
        waves: Mono clips.
        sample_rate: Their rate in Hz.
        fmin: Lowest pitch searched.
        fmax: Highest pitch searched.
        envelope_hz: Smoothing of the noise's spectral envelope.
        seed: Seed of the noise (clip ``i`` uses ``seed + i``).

    Returns:
        ``{"clips", "music", "shaped_noise"}``: the clip count and the two means.
    """
    if not waves:
        raise ValueError("music_vs_noise needs at least one clip")
    music, noise = [], []
    for index, wave in enumerate(waves):
        music.append(pitch_confidence(wave, sample_rate, fmin, fmax))
        control = shaped_noise(wave, sample_rate, envelope_hz, seed + index)
        noise.append(pitch_confidence(control, sample_rate, fmin, fmax))
    return {
        "clips": len(waves),
        "music": float(np.mean(music)),
        "shaped_noise": float(np.mean(noise)),
    }

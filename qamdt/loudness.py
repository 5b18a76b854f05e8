"""How loud a signal is heard: the A-weighting curve and A-weighted levels."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def a_weighting_db(freqs: np.ndarray) -> np.ndarray:
    """The A-weighting curve of IEC 61672-1 in dB (0 dB at 1 kHz) at ``freqs`` in Hz."""
    f2 = np.square(np.asarray(freqs, dtype=np.float64))
    gain = (12194.0**2 * f2**2) / (
        (f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2)
    )
    return 20.0 * np.log10(np.maximum(gain, EPS)) + 2.0


def a_weighted_rms(x: np.ndarray, sr: int) -> float:
    """Root mean square of a signal after A-weighting: how loud it is heard."""
    spectrum = np.fft.rfft(x)
    gain = 10.0 ** (a_weighting_db(np.fft.rfftfreq(x.size, 1.0 / sr)) / 20.0)
    return float(np.sqrt(np.mean(np.square(np.fft.irfft(spectrum * gain, x.size))) + EPS))

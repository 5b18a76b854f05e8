"""Is a window seam audible as a jump? Spectral flux at the seams against elsewhere.

Spectral flux (the summed rise of the log-mel spectrum from one frame to the next) peaks
where the sound changes abruptly: an onset, or a seam between two pieces of audio that do
not agree. A long piece made of windows is judged by the flux around each seam (the
largest value within ``reach`` seconds) against the same statistic at every position away
from the seams: a ratio near 1 means a seam changes the sound no more than the music does
anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_REACH = 0.25
"""Seconds either side of a seam (and of every other position) searched for the peak."""


def spectral_flux(wave: np.ndarray, spec="embedded") -> np.ndarray:
    """Positive log-mel flux per frame (``frames - 1`` values), mean over the bands.

    Args:
        wave: Mono samples at the spec's rate.
        spec: The audio preset (or its name) of the mel front end.
    """
    from qamdt.mel import MelFrontEnd

    front = MelFrontEnd(spec)
    with torch.no_grad():
        mel = front(torch.as_tensor(np.ascontiguousarray(wave), dtype=torch.float32)).numpy()
    return np.maximum(np.diff(mel, axis=1), 0.0).mean(axis=0)


def seam_flux_ratios(
    wave: np.ndarray,
    seams: Sequence[float],
    spec="embedded",
    reach: float = DEFAULT_REACH,
    controls: Sequence[float] = (),
) -> dict[str, float | list[float]]:
    """Peak flux near each seam over the median of the same peak away from the seams.

    Args:
        wave: Mono samples at the spec's rate.
        seams: Seam times in seconds.
        spec: The audio preset (or its name).
        reach: Seconds either side of a position searched for its peak flux; positions
            within ``2 * reach`` of a seam are left out of the median.
        controls: Times (seconds) where no seam is, read over the same reference: what
            the music itself gives away from the seams.

    Returns:
        ``ratios`` (one per seam), ``control_ratios`` (one per control), ``mean``, ``max``
        and ``median_elsewhere`` (the reference), or empty ratios and NaNs when there is no
        seam or no position away from them.
    """
    from qamdt.audio_spec import get_audio_spec

    spec = get_audio_spec(spec) if isinstance(spec, str) else spec
    flux = spectral_flux(wave, spec)
    fps = spec.sample_rate / spec.hop_length
    half = max(1, int(round(reach * fps)))
    padded = np.pad(flux, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    peaks = windows.max(axis=1)
    # Flux value i compares frames i and i + 1: frame i + 1 starts near (i + 1) / fps.
    times = (np.arange(len(flux)) + 1) / fps
    near = np.zeros(len(flux), dtype=bool)
    for seam in seams:
        near |= np.abs(times - seam) <= 2 * reach
    nan = float("nan")
    if not len(seams) or near.all():
        return {
            "ratios": [],
            "control_ratios": [],
            "mean": nan,
            "max": nan,
            "median_elsewhere": nan,
        }
    reference = float(np.median(peaks[~near]))

    def ratios_at(positions):
        scale = max(reference, 1e-12)
        return [float(peaks[int(np.argmin(np.abs(times - p)))] / scale) for p in positions]

    ratios = ratios_at(seams)
    return {
        "ratios": ratios,
        "control_ratios": ratios_at(controls),
        "mean": float(np.mean(ratios)),
        "max": float(np.max(ratios)),
        "median_elsewhere": reference,
    }


def window_seams(windows: Sequence[Sequence[float]]) -> list[float]:
    """Where each window takes over from the one before: the earlier window's end."""
    return [float(previous[1]) for previous in windows[:-1]]

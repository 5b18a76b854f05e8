"""Deterministic windows that cover a whole clip, for models that score fixed-length input.

A clip longer than a window is cut into evenly spaced windows, the first at its start and
the last ending at its end; a shorter clip is one window (kept short, or padded).
"""

from __future__ import annotations

import math

import numpy as np

# Relative excess length of a clip still covered by one centred window (CLAP scorers).
WINDOW_SLACK = 0.05


def window_starts(total: int, size: int, slack: float = WINDOW_SLACK) -> list[int]:
    """Deterministic starts of the windows that cover a clip.

    A clip no longer than a window gets one window at 0 (the caller keeps it short or pads
    it). A clip at most ``slack`` (relative) longer than a window gets one centred window,
    dropping a sliver at each end. Longer clips get ``ceil(total / size - slack)`` windows,
    the first at 0, the last ending at the clip's end, the others evenly spaced between.

    Args:
        total: Clip length (samples or frames).
        size: Window length, same unit.
        slack: Relative excess length still covered by a single centred window; 0 gives
            ``ceil(total / size)`` windows for every clip longer than one.

    Returns:
        The start of each window.

    Raises:
        ValueError: If ``size`` is not positive.
    """
    if size <= 0:
        raise ValueError(f"window size must be > 0, got {size}")
    if total <= size:
        return [0]
    count = max(1, math.ceil(total / size - slack))
    if count == 1:
        return [(total - size) // 2]
    return np.round(np.linspace(0, total - size, count)).astype(int).tolist()


def split_windows(wave: np.ndarray, size: int) -> list[np.ndarray]:
    """Cuts a 1-D clip into the windows of :func:`window_starts` (a short clip stays whole).

    Args:
        wave: ``(samples,)`` audio.
        size: Window length in samples.

    Returns:
        The windows, each at most ``size`` samples.
    """
    return [wave[s : s + size] for s in window_starts(wave.shape[0], size)]


def padded_windows(x: np.ndarray, size: int, fill: float = 0.0) -> list[tuple[np.ndarray, int]]:
    """Windows of exactly ``size`` steps along the last axis, with their valid lengths.

    A clip of at most ``size`` steps becomes one window padded with ``fill`` at the end;
    a longer one gets ``ceil(steps / size)`` evenly spaced windows covering it (neighbours
    overlap unless it is a whole number of windows long).

    Args:
        x: Audio ``(samples,)`` or features ``(..., frames)``.
        size: Window length in steps.
        fill: Value of the padding.

    Returns:
        ``(window, valid_steps)`` pairs; a padded window is float32.
    """
    total = x.shape[-1]
    if total <= size:
        out = np.full((*x.shape[:-1], size), fill, dtype=np.float32)
        out[..., :total] = x
        return [(out, total)]
    return [(x[..., s : s + size], size) for s in window_starts(total, size, slack=0.0)]

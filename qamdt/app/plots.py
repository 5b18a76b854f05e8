"""Pictures the app shows: spectrograms, the p-MOS distribution, level counts, CLAP scores.

Figures are built with matplotlib's object API (no pyplot state), so requests drawn at
the same time in the server's worker threads do not share a figure.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from qamdt.audio_spec import AudioSpec
from qamdt.quality import LEVELS


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    return path


@functools.lru_cache(maxsize=4)
def _front_end(spec: AudioSpec):
    from qamdt.mel import MelFrontEnd

    return MelFrontEnd(spec)


def spectrogram_png(wave: np.ndarray, spec: AudioSpec, path: Path, title: str = "") -> Path:
    """Draws the log-mel spectrogram of a waveform at ``spec``'s rate.

    Args:
        wave: Mono samples at ``spec.sample_rate``.
        spec: The audio preset whose mel settings are used.
        path: The PNG to write.
        title: Shown above the picture.
    """
    front = _front_end(spec)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.shape[0] < front.min_samples:
        wave = np.pad(wave, (0, front.min_samples - wave.shape[0]))
    with torch.no_grad():
        mel = front(torch.from_numpy(np.ascontiguousarray(wave))).cpu().numpy()  # [mels, frames]
    figure = _figure(6.4, 2.4)
    axis = figure.add_subplot()
    seconds = wave.shape[0] / spec.sample_rate
    axis.imshow(
        mel,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=-11.5,
        vmax=2.0,
        extent=(0.0, seconds, 0, mel.shape[0]),
    )
    axis.set_xlabel("seconds")
    axis.set_ylabel("mel band")
    axis.set_title(title, fontsize=9)
    return _save(figure, path)


def pmos_histogram_png(pmos: Sequence[float], stats, path: Path) -> Path:
    """The p-MOS distribution, with the level edges of the statistics when given."""
    figure = _figure(6.4, 3.0)
    axis = figure.add_subplot()
    axis.hist(np.asarray(pmos, dtype=np.float64), bins=40, color="#4c72b0")
    if stats is not None:
        for edge in stats.level_edges:
            axis.axvline(edge, color="#c44e52", linestyle="--", linewidth=1)
    axis.set_xlabel("p-MOS" + (" (dashed: level edges)" if stats is not None else ""))
    axis.set_ylabel("clips")
    axis.set_title(f"p-MOS of {len(pmos)} clips", fontsize=10)
    return _save(figure, path)


def level_counts_png(counts: Mapping[int, int], path: Path) -> Path:
    """Clips per quality level."""
    figure = _figure(4.0, 3.0)
    axis = figure.add_subplot()
    values = [counts.get(level, 0) for level in LEVELS]
    axis.bar([str(level) for level in LEVELS], values, color="#55a868")
    axis.set_xlabel("quality level")
    axis.set_ylabel("clips")
    axis.set_title("level counts", fontsize=10)
    return _save(figure, path)


def clap_histogram_png(scores: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Overlaid CLAP-score histograms, one per named caption kind."""
    figure = _figure(6.4, 3.0)
    axis = figure.add_subplot()
    drawn = [(name, np.asarray(v, dtype=np.float64)) for name, v in scores.items() if len(v)]
    low = min((v.min() for _, v in drawn), default=0.0)
    high = max((v.max() for _, v in drawn), default=1.0)
    bins = np.linspace(low, high if high > low else low + 1e-3, 31)
    for name, values in drawn:
        axis.hist(values, bins=bins, alpha=0.55, label=f"{name} (mean {values.mean():.3f})")
    if drawn:
        axis.legend(fontsize=8)
    axis.set_xlabel("CLAP score (caption against its clip)")
    axis.set_ylabel("clips")
    axis.set_title("CLAP scores of the captions", fontsize=10)
    return _save(figure, path)

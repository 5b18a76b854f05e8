"""Picture of a p-MOS distribution with its quality levels and prefixes (paper Figs. 1, 3)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mos_predictor.level_rules import QualityStatsError
from mos_predictor.quality_stats import QualityStats

_LEVEL_COLOUR = "#555555"
_LOW_COLOUR = "#cc3311"
_HIGH_COLOUR = "#009988"


def plot_quality_distribution(
    scores: Any,
    stats: QualityStats,
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Draw the p-MOS histogram with the fitted distribution, level edges and prefix thresholds.

    The picture shows the density histogram of the scores, the fitted skew-normal pdf (a
    normal pdf with ``mu`` and ``sigma`` when ``stats`` has no skew-normal fit), a vertical
    line at each level edge with the level numbers between them, and the "low quality" and
    "high quality" regions shaded beyond their dashed thresholds. ``mu`` and ``sigma`` are
    given in the legend. Drawn with matplotlib's Agg canvas, without touching pyplot.

    Args:
        scores: The p-MOS scores (non-finite ones are left out).
        stats: The statistics that define levels and prefixes.
        path: Where to write the PNG (folder created if missing; written atomically).
        title: Title of the picture (default: the number of scores and the level rule).

    Returns:
        The path written.

    Raises:
        QualityStatsError: No finite score to draw.
    """
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise QualityStatsError("no finite score to draw")
    edges = list(stats.level_edges)
    marks = [*edges, stats.low_below, stats.high_from, stats.mu]
    lo = min(float(s.min()), *marks)
    hi = max(float(s.max()), *marks)
    pad = 0.05 * (hi - lo) if hi > lo else max(stats.sigma, 0.1)
    lo, hi = lo - pad, hi + pad

    figure = Figure(figsize=(8, 4.5), dpi=120)
    axis = figure.add_subplot()
    bins = np.histogram_bin_edges(s, bins="auto")
    if bins.size > 81:
        bins = np.linspace(s.min(), s.max(), 81) if s.max() > s.min() else 80
    axis.hist(s, bins=bins, density=True, color="#88aadd", edgecolor="white", label="p-MOS")

    x = np.linspace(lo, hi, 600)
    if stats.skewnorm is not None:
        fit = stats.skewnorm
        axis.plot(
            x,
            fit.pdf(x),
            color="#223388",
            lw=2,
            label=f"skew-normal fit (a={fit.a:.2f}, loc={fit.loc:.3f}, scale={fit.scale:.3f})",
        )
    else:
        normal = np.exp(-0.5 * ((x - stats.mu) / stats.sigma) ** 2) / (
            stats.sigma * np.sqrt(2 * np.pi)
        )
        axis.plot(x, normal, color="#223388", lw=2, ls="--", label="normal(mu, sigma)")

    axis.axvspan(lo, stats.low_below, color=_LOW_COLOUR, alpha=0.08, lw=0)
    axis.axvspan(stats.high_from, hi, color=_HIGH_COLOUR, alpha=0.08, lw=0)
    axis.axvline(
        stats.low_below,
        color=_LOW_COLOUR,
        ls="--",
        lw=1.2,
        label=f'"low quality" at <= {stats.low_below:.3f}',
    )
    axis.axvline(
        stats.high_from,
        color=_HIGH_COLOUR,
        ls="--",
        lw=1.2,
        label=f'"high quality" at >= {stats.high_from:.3f}',
    )
    for i, edge in enumerate(dict.fromkeys(edges)):
        axis.axvline(
            edge, color=_LEVEL_COLOUR, lw=1, alpha=0.8, label="level edges" if i == 0 else None
        )
    axis.axvline(
        stats.mu,
        color="black",
        lw=1.5,
        ls=":",
        label=f"mu = {stats.mu:.3f}, sigma = {stats.sigma:.3f}",
    )

    # Level numbers between the edges, just above the frame; a zero-width bin (level 3 of
    # the eq1 rule) is labelled at its single point.
    on_top = blended_transform_factory(axis.transData, axis.transAxes)
    bounds = [lo, *edges, hi]
    for level in range(1, 6):
        left, right = bounds[level - 1], bounds[level]
        axis.text(
            (left + right) / 2,
            1.01,
            str(level),
            transform=on_top,
            ha="center",
            va="bottom",
            fontsize=11,
            fontweight="bold",
            color=_LEVEL_COLOUR,
        )

    axis.set_xlim(lo, hi)
    axis.set_xlabel("p-MOS")
    axis.set_ylabel("density")
    axis.set_title(
        title or f"p-MOS distribution, {s.size} clips, levels ({stats.level_rule} rule)", pad=20
    )
    axis.legend(loc="upper left", fontsize=7, framealpha=0.9)
    figure.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

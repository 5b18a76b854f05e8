"""Labelling a manifest with quality levels and prefixes: the flow of ``qamdt mos stats``.

Statistics are fitted on the rows that have a p-MOS (:func:`fit_quality_stats`, rules in
:mod:`mos_predictor.level_rules`), or reused from a saved ``quality_stats.json``; every
scored row then gets its level and prefix (:func:`label_manifest_quality`), and
:func:`run_stats` also saves the statistics and draws their distribution.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mos_predictor.level_rules import DEFAULT_PREFIX_SIGMAS, QualityStatsError
from mos_predictor.quality_stats import QualityStats, fit_quality_stats
from qamdt.errors import ConfigError
from qamdt.quality import QUALITY_STATS_NAME

QUALITY_PLOT_NAME = "quality_distribution.png"
"""File name of the distribution picture drawn by :func:`run_stats`."""


def label_manifest_quality(
    manifest_path: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    stats: QualityStats | str | os.PathLike | None = None,
    **fit_kwargs: Any,
) -> QualityStats:
    """Write quality levels and prefixes into every manifest row that has a p-MOS.

    Captions are left alone: the prefix is applied when training reads the caption. Rows
    without a ``pmos`` are written back unchanged (their quality fields stay as they were,
    normally None).

    Args:
        manifest_path: The manifest (JSONL).
        out_path: Where to write the labelled manifest (default: in place, atomically).
        stats: Statistics to reuse (a :class:`QualityStats` or the path of a saved one),
            e.g. the training set's when labelling new data; None fits them on the rows of
            this manifest that have a ``pmos`` (all splits).
        **fit_kwargs: Options of :func:`fit_quality_stats` when fitting.

    Returns:
        The statistics used: the fitted ones, or ``stats`` unchanged.

    Raises:
        QualityStatsError: No row to fit on, or a fit failure.
        ConfigError: ``fit_kwargs`` together with ``stats``.
        ManifestError: An invalid manifest.
    """
    return label_manifest_with_scores(manifest_path, out_path, stats, fit_kwargs)[0]


def label_manifest_with_scores(
    manifest_path: str | os.PathLike,
    out_path: str | os.PathLike | None,
    stats: QualityStats | str | os.PathLike | None,
    fit_kwargs: dict[str, Any],
) -> tuple[QualityStats, np.ndarray, int]:
    """:func:`label_manifest_quality`, also returning the labelled scores and the row count.

    The manifest streams: one pass reads the scores (the fit keeps one number per scored
    row), a second rewrites the rows in batches, so memory does not grow with the rows.
    Written in place, absolute audio paths stay absolute.
    """
    from qamdt.manifest import iter_manifest, write_manifest
    from qamdt.manifest.stages import batched

    if stats is not None and fit_kwargs:
        raise ConfigError(
            f"options {', '.join(sorted(fit_kwargs))} only apply when fitting; they cannot "
            "change given stats"
        )
    if stats is not None and not isinstance(stats, QualityStats):
        stats = QualityStats.load(stats)
    manifest_path = Path(manifest_path)
    scores = np.fromiter(
        (r.pmos for r in iter_manifest(manifest_path) if r.pmos is not None), dtype=np.float64
    )
    if stats is None:
        if not scores.size:
            raise QualityStatsError(
                f"{manifest_path}: no row has a pmos; score the clips with a MOS model first"
            )
        try:
            stats = fit_quality_stats(scores, **fit_kwargs)
        except QualityStatsError as exc:
            raise QualityStatsError(f"{manifest_path}: {exc}") from None

    def labelled():
        for batch in batched(iter_manifest(manifest_path, validate=False), 4096):
            scored = [i for i, record in enumerate(batch) if record.pmos is not None]
            if not scored:
                yield from batch
                continue
            values = np.array([batch[i].pmos for i in scored], dtype=np.float64)
            pairs = zip(stats.levels_for(values), stats.prefixes_for(values), strict=True)
            for i, (level, prefix) in zip(scored, pairs, strict=True):
                batch[i] = batch[i].replace(quality_level=int(level), quality_prefix=str(prefix))
            yield from batch

    out = manifest_path if out_path is None else Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = write_manifest(
        out, labelled(), source_dir=manifest_path.parent, keep_absolute=out == manifest_path
    )
    return stats, scores, rows


def run_stats(
    manifest: str | os.PathLike,
    out: str | os.PathLike | None = None,
    stats_out: str | os.PathLike | None = None,
    level_rule: str = "five-bin",
    prefix_sigmas: float | None = DEFAULT_PREFIX_SIGMAS,
    prefix_thresholds: tuple[float, float] | None = None,
    plot: bool = True,
    *,
    level_edges: Iterable[float] | None = None,
    level_shares: Iterable[float] | None = None,
    stats: QualityStats | str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Everything ``qamdt mos stats MANIFEST`` does.

    Fits the statistics on the rows with a ``pmos`` (or reuses ``stats``), writes levels and
    prefixes into the manifest, saves ``quality_stats.json`` beside the written manifest
    (or at ``stats_out``) and draws ``quality_distribution.png`` beside that file.

    Args:
        manifest: The manifest to label.
        out: Where to write the labelled manifest (default: in place).
        stats_out: Where to save the statistics (default: beside the written manifest).
        level_rule: Level rule when fitting.
        prefix_sigmas: Prefix thresholds in sigma units when fitting.
        prefix_thresholds: Absolute prefix thresholds when fitting.
        plot: Draw the distribution picture.
        level_edges: Fixed level thresholds when fitting.
        level_shares: Level shares of the ``"quantile"`` rule when fitting.
        stats: Statistics to reuse instead of fitting (object or saved file); the fitting
            options must then stay at their defaults. They are saved at the stats path too,
            so that later stages find them beside this manifest.

    Returns:
        A summary: ``rows``, ``labelled`` (rows with a pmos), ``fitted`` (False when stats
        were reused), ``mu``, ``sigma``, ``skewnorm`` (dict or None), ``level_rule``,
        ``level_edges``, ``prefix_thresholds``, ``level_counts`` and ``prefix_counts`` of
        this manifest's labelled rows, and the paths ``manifest``, ``stats``, ``plot``
        (None without a picture).
    """
    fit_kwargs: dict[str, Any] = {}
    if level_rule != "five-bin":
        fit_kwargs["level_rule"] = level_rule
    if prefix_sigmas != DEFAULT_PREFIX_SIGMAS:
        fit_kwargs["prefix_sigmas"] = prefix_sigmas
    if prefix_thresholds is not None:
        fit_kwargs["prefix_thresholds"] = prefix_thresholds
    if level_edges is not None:
        fit_kwargs["level_edges"] = level_edges
    if level_shares is not None:
        fit_kwargs["level_shares"] = level_shares
    fitted = stats is None
    used, scores, rows = label_manifest_with_scores(manifest, out, stats, fit_kwargs)
    manifest_out = Path(manifest if out is None else out)
    stats_path = (
        Path(stats_out) if stats_out is not None else manifest_out.parent / QUALITY_STATS_NAME
    )
    used.save(stats_path)
    plot_path = None
    if plot and scores.size:
        from mos_predictor.stats_plot import plot_quality_distribution

        plot_path = plot_quality_distribution(
            scores,
            used,
            stats_path.parent / QUALITY_PLOT_NAME,
            title=f"p-MOS of {manifest_out.name}",
        )
    level_counts, prefix_counts = used.count_labels(scores)
    return {
        "rows": rows,
        "labelled": int(scores.size),
        "fitted": fitted,
        "mu": used.mu,
        "sigma": used.sigma,
        "skewnorm": None if used.skewnorm is None else used.skewnorm.to_dict(),
        "level_rule": used.level_rule,
        "level_edges": list(used.level_edges),
        "prefix_thresholds": list(used.prefix_thresholds),
        "level_counts": level_counts,
        "prefix_counts": prefix_counts,
        "manifest": str(manifest_out),
        "stats": str(stats_path),
        "plot": None if plot_path is None else str(plot_path),
    }

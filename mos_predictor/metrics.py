"""MOS prediction metrics at utterance and system level, as the VoiceMOS/AudioMOS challenges report.

``mse`` is the mean squared error, ``lcc`` the linear (Pearson) correlation, ``srcc`` the
Spearman rank correlation and ``ktau`` Kendall's tau-b, all from :mod:`scipy.stats`. A
correlation is NaN, not an error, when it is undefined: fewer than two items or a
constant input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

METRIC_NAMES = ("mse", "lcc", "srcc", "ktau")


def _as_vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _correlation(fn: Any, pred: np.ndarray, true: np.ndarray) -> float:
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return math.nan
    with warnings.catch_warnings():
        # NaN inputs give NaN; scipy's warnings about them add nothing here.
        warnings.simplefilter("ignore")
        return float(fn(pred, true)[0])


def quality_metrics(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> dict:
    """Error and correlations of predicted against true scores.

    Args:
        pred: Predicted scores.
        true: True scores, same length.

    Returns:
        ``{"mse", "lcc", "srcc", "ktau", "count"}``; ``mse`` is NaN for no items, the
        correlations are NaN for fewer than two items or a constant input.

    Raises:
        ValueError: If the inputs are not one-dimensional or differ in length.
    """
    pred_v, true_v = _as_vector(pred, "pred"), _as_vector(true, "true")
    if pred_v.shape != true_v.shape:
        raise ValueError(f"pred and true differ in length: {pred_v.size} vs {true_v.size}")
    n = int(pred_v.size)
    return {
        "mse": float(np.mean((pred_v - true_v) ** 2)) if n else math.nan,
        "lcc": _correlation(stats.pearsonr, pred_v, true_v),
        "srcc": _correlation(stats.spearmanr, pred_v, true_v),
        "ktau": _correlation(stats.kendalltau, pred_v, true_v),
        "count": n,
    }


def system_means(
    pred: Sequence[float] | np.ndarray,
    true: Sequence[float] | np.ndarray,
    systems: Sequence[Any],
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Average predicted and true scores per system.

    Args:
        pred: Predicted scores.
        true: True scores.
        systems: System id of each item.

    Returns:
        ``(ids, mean_pred, mean_true)`` with the systems in order of first appearance.

    Raises:
        ValueError: If the three inputs differ in length.
    """
    pred_v, true_v = _as_vector(pred, "pred"), _as_vector(true, "true")
    systems = list(systems)
    if not pred_v.size == true_v.size == len(systems):
        raise ValueError(
            f"pred, true and systems differ in length: {pred_v.size}, {true_v.size}, {len(systems)}"
        )
    ids: list[Any] = []
    rows: dict[Any, list[int]] = {}
    for i, system in enumerate(systems):
        if system not in rows:
            rows[system] = []
            ids.append(system)
        rows[system].append(i)
    mean_pred = np.array([pred_v[rows[s]].mean() for s in ids], dtype=np.float64)
    mean_true = np.array([true_v[rows[s]].mean() for s in ids], dtype=np.float64)
    return ids, mean_pred, mean_true


def system_level(
    pred: Sequence[float] | np.ndarray,
    true: Sequence[float] | np.ndarray,
    systems: Sequence[Any],
) -> dict:
    """System-level metrics: scores averaged per system, then :func:`quality_metrics`.

    Args:
        pred: Predicted scores.
        true: True scores.
        systems: System id of each item.

    Returns:
        As :func:`quality_metrics`, with ``count`` the number of systems.

    Raises:
        ValueError: If the three inputs differ in length.
    """
    _, mean_pred, mean_true = system_means(pred, true, systems)
    return quality_metrics(mean_pred, mean_true)


def evaluate_predictions(
    pred: Sequence[float] | np.ndarray,
    true: Sequence[float] | np.ndarray,
    systems: Sequence[Any] | None = None,
) -> dict:
    """Utterance-level and (with system ids) system-level metrics.

    Args:
        pred: Predicted scores.
        true: True scores.
        systems: System id of each item, or None to skip the system level.

    Returns:
        ``{"utterance": {...}, "system": {...} or None, "count": n}``.

    Raises:
        ValueError: If the inputs differ in length.
    """
    utterance = quality_metrics(pred, true)
    system = None if systems is None else system_level(pred, true, systems)
    return {"utterance": utterance, "system": system, "count": utterance["count"]}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4f}"


def format_metrics(result: dict, title: str | None = None) -> str:
    """Render metrics as a small aligned table.

    Args:
        result: An :func:`evaluate_predictions` result, or a single
            :func:`quality_metrics` dict.
        title: A line to put above the table.

    Returns:
        The table, one row per level, without a trailing newline.
    """
    if "utterance" in result:
        levels = [("utterance", result["utterance"]), ("system", result.get("system"))]
    else:
        levels = [("all", result)]
    header = ["level", "count", *(name.upper() for name in METRIC_NAMES)]
    rows = [
        [label, str(metrics.get("count", "")), *(_cell(metrics.get(k)) for k in METRIC_NAMES)]
        for label, metrics in levels
        if metrics is not None
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [] if title is None else [title]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)

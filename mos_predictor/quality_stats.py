"""Quality statistics of a p-MOS set (:class:`QualityStats`) and their fit.

The level rules and prefix thresholds they apply are described in
:mod:`mos_predictor.level_rules`. Statistics are fitted once, on the training set
(:func:`fit_quality_stats`, :func:`mos_predictor.stats.label_manifest_quality`), saved as
``quality_stats.json`` beside the manifest (:data:`qamdt.quality.QUALITY_STATS_NAME`) and
reused for fine-tuning and generation, so that level 4 means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mos_predictor.level_rules import (
    DEFAULT_PREFIX_SIGMAS,
    LEVEL_RULES,
    QualityStatsError,
    SkewNormFit,
    checked_counts,
    checked_edges,
    finite_number,
    finite_scores,
    quantile_edges,
    rule_edges,
)
from qamdt.config import ConfigBase
from qamdt.errors import ConfigError
from qamdt.json_files import write_json
from qamdt.quality import LEVELS, PREFIXES

_PREFIX_ARRAY = np.array(PREFIXES, dtype=object)


@dataclass(frozen=True)
class QualityStats(ConfigBase):
    """Statistics of a p-MOS set and the quality labels they define.

    Build with :func:`fit_quality_stats` (from scores) or :meth:`from_mu_sigma` (from known
    ``mu`` and ``sigma``), save with :meth:`save`, reload with :meth:`load`.

    ``sigma`` is the population standard deviation (``ddof=0``, ``numpy.std``'s default),
    the maximum-likelihood estimate of a normal fit; for the thousands of clips of a
    training set it differs from the sample standard deviation by a negligible factor
    ``sqrt(n / (n - 1))``.

    Attributes:
        mu: Mean of the p-MOS set.
        sigma: Population standard deviation of the p-MOS set (> 0).
        count: Number of scores the statistics were computed from (0 when given by hand).
        level_rule: One of :data:`LEVEL_RULES`.
        level_edges: Four non-decreasing thresholds between levels 1|2, 2|3, 3|4 and 4|5.
            For ``"eq1"`` they are the effective boundaries ``(mu-sigma, mu, mu, mu+sigma)``
            of the printed formula, which has level 3 only at ``mu`` itself; the level is
            still computed with the formula.
        low_below: Scores ``<= low_below`` get "low quality" (inclusive).
        high_from: Scores ``>= high_from`` get "high quality" (inclusive).
        prefix_sigmas: ``k`` when the prefix thresholds are ``mu -/+ k sigma``; None when
            they were given as absolute numbers.
        skewnorm: The skew-normal fit, or None when not fitted.
        level_counts: Scores per level 1-5 in the set the statistics were fitted on.
        prefix_counts: Scores per prefix in that set.
    """

    mu: float
    sigma: float
    count: int
    level_rule: str
    level_edges: tuple[float, float, float, float]
    low_below: float
    high_from: float
    prefix_sigmas: float | None = DEFAULT_PREFIX_SIGMAS
    skewnorm: SkewNormFit | None = None
    level_counts: dict[int, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))
    prefix_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PREFIXES, 0))

    config_where = "quality stats"

    def __post_init__(self) -> None:
        mu = finite_number(self.mu, "mu")
        sigma = finite_number(self.sigma, "sigma")
        if sigma <= 0:
            raise ConfigError(f"sigma must be > 0, got {sigma}")
        if self.level_rule not in LEVEL_RULES:
            raise ConfigError(
                f"level_rule must be one of {', '.join(LEVEL_RULES)}, got {self.level_rule!r}"
            )
        edges = checked_edges(self.level_edges, allow_equal=self.level_rule == "eq1")
        if self.level_rule not in ("edges", "quantile"):
            # Edges derived from mu and sigma must agree with them (a hand-edited file).
            expected = rule_edges(self.level_rule, mu, sigma)
            if not all(
                math.isclose(e, x, rel_tol=1e-9, abs_tol=1e-12)
                for e, x in zip(edges, expected, strict=True)
            ):
                raise ConfigError(
                    f"level_edges {list(edges)} do not match level_rule {self.level_rule!r} "
                    f"with mu {mu} and sigma {sigma} (expected {list(expected)}); use "
                    "level_rule 'edges' for fixed thresholds"
                )
        low = finite_number(self.low_below, "low_below")
        high = finite_number(self.high_from, "high_from")
        if not low < high:
            raise ConfigError(f"low_below ({low}) must be below high_from ({high})")
        k = self.prefix_sigmas
        if k is not None:
            k = finite_number(k, "prefix_sigmas")
            expected = (mu - k * sigma, mu + k * sigma)
            if not all(
                math.isclose(t, x, rel_tol=1e-9, abs_tol=1e-12)
                for t, x in zip((low, high), expected, strict=True)
            ):
                raise ConfigError(
                    f"prefix thresholds ({low}, {high}) do not match prefix_sigmas {k} with "
                    f"mu {mu} and sigma {sigma} (expected {list(expected)}); set "
                    "prefix_sigmas to null for absolute thresholds"
                )
        count = self.count
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ConfigError(f"count must be an integer >= 0, got {count!r}")
        set_ = object.__setattr__
        set_(self, "mu", mu)
        set_(self, "sigma", sigma)
        set_(self, "count", int(count))
        set_(self, "level_edges", edges)
        set_(self, "low_below", low)
        set_(self, "high_from", high)
        set_(self, "prefix_sigmas", k)
        set_(self, "level_counts", checked_counts(self.level_counts, LEVELS, "level_counts"))
        set_(self, "prefix_counts", checked_counts(self.prefix_counts, PREFIXES, "prefix_counts"))

    @classmethod
    def from_mu_sigma(
        cls,
        mu: float,
        sigma: float,
        *,
        level_rule: str = "five-bin",
        prefix_sigmas: float | None = DEFAULT_PREFIX_SIGMAS,
        prefix_thresholds: tuple[float, float] | None = None,
        level_edges: Iterable[float] | None = None,
        count: int = 0,
        skewnorm: SkewNormFit | None = None,
    ) -> QualityStats:
        """Build statistics from a known mean and standard deviation.

        Args:
            mu: Mean p-MOS.
            sigma: Standard deviation (> 0).
            level_rule: ``"five-bin"`` or ``"eq1"``; ``"edges"`` (or the default) together
                with ``level_edges`` for fixed thresholds.
            prefix_sigmas: Prefix thresholds at ``mu -/+ prefix_sigmas * sigma``.
            prefix_thresholds: Absolute ``(low_below, high_from)``; overrides
                ``prefix_sigmas``.
            level_edges: Four increasing thresholds between the levels.
            count: Number of scores behind ``mu`` and ``sigma``.
            skewnorm: A skew-normal fit to keep with them.

        Returns:
            The statistics, with zero level and prefix counts.

        Raises:
            ConfigError: Invalid or contradictory options.
        """
        mu = finite_number(mu, "mu")
        sigma = finite_number(sigma, "sigma")
        if sigma <= 0:
            raise ConfigError(f"sigma must be > 0, got {sigma}")
        if level_edges is not None:
            if level_rule not in ("five-bin", "edges", "quantile"):
                raise ConfigError(
                    f"level_edges replace the level rule; do not combine them with "
                    f"level_rule {level_rule!r}"
                )
            level_rule = "quantile" if level_rule == "quantile" else "edges"
            edges = checked_edges(level_edges, allow_equal=False)
        elif level_rule in ("edges", "quantile"):
            raise ConfigError(
                f"level_rule {level_rule!r} needs level_edges (four increasing numbers)"
            )
        elif level_rule in LEVEL_RULES:
            edges = rule_edges(level_rule, mu, sigma)
        else:
            raise ConfigError(
                f"level_rule must be one of {', '.join(LEVEL_RULES)}, got {level_rule!r}"
            )
        if prefix_thresholds is not None:
            try:
                low, high = prefix_thresholds
            except (TypeError, ValueError):
                raise ConfigError(
                    f"prefix_thresholds must be (low_below, high_from), got {prefix_thresholds!r}"
                ) from None
            low = finite_number(low, "prefix_thresholds[0]")
            high = finite_number(high, "prefix_thresholds[1]")
            prefix_sigmas = None
        else:
            if prefix_sigmas is None:
                raise ConfigError("give prefix_sigmas or prefix_thresholds")
            prefix_sigmas = finite_number(prefix_sigmas, "prefix_sigmas")
            if prefix_sigmas <= 0:
                raise ConfigError(f"prefix_sigmas must be > 0, got {prefix_sigmas}")
            low, high = mu - prefix_sigmas * sigma, mu + prefix_sigmas * sigma
        return cls(
            mu=mu,
            sigma=sigma,
            count=count,
            level_rule=level_rule,
            level_edges=edges,
            low_below=low,
            high_from=high,
            prefix_sigmas=prefix_sigmas,
            skewnorm=skewnorm,
        )

    @property
    def prefix_thresholds(self) -> tuple[float, float]:
        """``(low_below, high_from)``."""
        return self.low_below, self.high_from

    def levels_for(self, scores: Any) -> np.ndarray:
        """Quality levels of many scores.

        Args:
            scores: Array-like of finite scores, any shape.

        Returns:
            Integer array (int64) of levels 1-5, the shape of ``scores``.

        Raises:
            QualityStatsError: A score is not finite.
        """
        s = finite_scores(scores)
        if self.level_rule == "eq1":
            # Wherever the clip to 1..5 leaves it unchanged, floor((s - (mu - 2 sigma)) / sigma)
            # is the number of thresholds mu + k sigma (k = -2..1) at or below s, minus one.
            # Counting by comparison evaluates eq. 1 in exact arithmetic, on the same
            # thresholds as the five-bin rule; the float division would give
            # floor(1.9999999999999996) = 1, level 2, for s == mu with mu 3.8, sigma 0.2.
            m, sd = self.mu, self.sigma
            thresholds = np.array([m - 2 * sd, m - sd, m, m + sd])
            floor_term = np.searchsorted(thresholds, s, side="right") - 1
            q = floor_term + np.where(s > m, 2, 1)
            return np.clip(q, 1, 5).astype(np.int64)
        return np.searchsorted(np.asarray(self.level_edges), s, side="right").astype(np.int64) + 1

    def level_for(self, score: float) -> int:
        """Quality level 1-5 of one score (see :meth:`levels_for`)."""
        return int(self.levels_for(score))

    def prefixes_for(self, scores: Any) -> np.ndarray:
        """Text prefixes of many scores.

        Args:
            scores: Array-like of finite scores, any shape.

        Returns:
            Object array of prefix strings, the shape of ``scores``.

        Raises:
            QualityStatsError: A score is not finite.
        """
        return _PREFIX_ARRAY[self._prefix_indices(scores)]

    def prefix_for(self, score: float) -> str:
        """Text prefix of one score (see :meth:`prefixes_for`)."""
        return str(self.prefixes_for(score))

    def count_labels(self, scores: Any) -> tuple[dict[int, int], dict[str, int]]:
        """Count how many scores get each level and each prefix.

        Args:
            scores: Array-like of finite scores.

        Returns:
            ``(level -> count for 1-5, prefix -> count)``, zeros included.
        """
        levels = np.bincount(self.levels_for(scores).ravel(), minlength=6)
        prefixes = np.bincount(self._prefix_indices(scores).ravel(), minlength=3)
        return (
            {lv: int(levels[lv]) for lv in LEVELS},
            {p: int(prefixes[i]) for i, p in enumerate(PREFIXES)},
        )

    def _prefix_indices(self, scores: Any) -> np.ndarray:
        s = finite_scores(scores)
        # "low" is tested first; low_below < high_from, so the order only documents intent.
        return np.where(s <= self.low_below, 0, np.where(s >= self.high_from, 2, 1))

    @classmethod
    def prepare(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """``count`` may be left out (0), and ``level_counts`` has its levels as strings."""
        values.setdefault("count", 0)
        counts = values.get("level_counts")
        if counts is not None:
            if not isinstance(counts, Mapping):
                raise ConfigError(f"{where}: level_counts must be an object")
            try:
                values["level_counts"] = {int(k): v for k, v in counts.items()}
            except ValueError:
                raise ConfigError(
                    f"{where}: level_counts keys must be levels 1-5, got {list(counts)}"
                ) from None
        return values

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as JSON, atomically (temp file, fsync, rename).

        Args:
            path: Destination file; its folder is created if missing.

        Returns:
            The path written.
        """
        path = Path(path)
        write_json(path, self.to_dict(), indent=2)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> QualityStats:
        """Read statistics written by :meth:`save`.

        Args:
            path: The JSON file.

        Returns:
            The statistics.

        Raises:
            FileNotFoundError: No such file.
            ConfigError: Invalid JSON, unknown or missing keys, invalid values.
        """
        path = os.fspath(path)
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: invalid JSON: {exc}") from None
        return cls.from_dict(d, where=path)


RELEASED_STATS = QualityStats.from_mu_sigma(3.80, 0.20)
"""The released loader's hard-coded statistics: ``mu = 3.80``, ``sigma = 0.20``, five-bin
levels with edges 3.4 / 3.6 / 4.0 / 4.2, prefixes "low" at ``<= 3.55`` and "high" at
``>= 4.05``."""


def fit_quality_stats(
    scores: Any,
    level_rule: str = "five-bin",
    prefix_sigmas: float | None = DEFAULT_PREFIX_SIGMAS,
    prefix_thresholds: tuple[float, float] | None = None,
    level_edges: Iterable[float] | None = None,
    level_shares: Iterable[float] | None = None,
) -> QualityStats:
    """Fit quality statistics to a p-MOS set.

    Non-finite scores are dropped with a warning. ``mu`` is the mean and ``sigma`` the
    population standard deviation of the rest; a skew-normal distribution is fitted too.

    Args:
        scores: The p-MOS scores (array-like).
        level_rule: ``"five-bin"`` (default) or ``"eq1"``; see the module docstring.
        prefix_sigmas: Prefix thresholds at ``mu -/+ prefix_sigmas * sigma``.
        prefix_thresholds: Absolute ``(low_below, high_from)``; overrides ``prefix_sigmas``.
        level_edges: Four increasing fixed thresholds between levels (rule ``"edges"``).
        level_shares: Shares of levels 1-5 for the ``"quantile"`` rule (five positive
            numbers summing to 1; default :data:`NORMAL_LEVEL_SHARES`).

    Returns:
        The statistics, with level and prefix counts of ``scores``.

    Raises:
        QualityStatsError: Fewer than two finite scores, or all of them equal.
        ConfigError: Invalid options.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    finite = np.isfinite(s)
    if not finite.all():
        warnings.warn(
            f"ignoring {int((~finite).sum())} non-finite of {s.size} scores", stacklevel=2
        )
        s = s[finite]
    if s.size < 2:
        raise QualityStatsError(
            f"need at least 2 finite scores to fit quality statistics, got {s.size}"
        )
    mu = float(np.mean(s))
    sigma = float(np.std(s))
    if not sigma > 0:
        raise QualityStatsError(
            f"all {s.size} scores are equal ({s[0]}): zero variance, "
            "no quality levels to tell apart"
        )
    if level_rule == "quantile":
        level_edges = quantile_edges(s, level_shares)
    elif level_shares is not None:
        raise ConfigError("level_shares only apply to level_rule 'quantile'")
    stats = QualityStats.from_mu_sigma(
        mu,
        sigma,
        level_rule=level_rule,
        prefix_sigmas=prefix_sigmas,
        prefix_thresholds=prefix_thresholds,
        level_edges=level_edges,
        count=int(s.size),
        skewnorm=SkewNormFit.fit(s),
    )
    level_counts, prefix_counts = stats.count_labels(s)
    return dataclasses.replace(stats, level_counts=level_counts, prefix_counts=prefix_counts)

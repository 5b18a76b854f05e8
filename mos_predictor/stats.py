"""Quality statistics of a p-MOS set: quality levels (tokens) and text prefixes.

After a MOS model has written ``pmos`` into each manifest row, the p-MOS set of the
training data gives a mean ``mu`` and a standard deviation ``sigma``. Every clip then gets

* a quality level 1-5, the quality token of the diffusion model, and
* a text prefix, ``"low quality"``, ``"medium quality"`` or ``"high quality"``, prepended
  to its caption as ``"<prefix>, <caption>"`` (:func:`with_prefix`) when training reads it.

Level rules (``level_rule``):

``"five-bin"`` (default)
    The mapping of the authors' released loader: ``s < mu-2sigma`` -> 1,
    ``[mu-2sigma, mu-sigma)`` -> 2, ``[mu-sigma, mu+sigma)`` -> 3, ``[mu+sigma, mu+2sigma)``
    -> 4, ``s >= mu+2sigma`` -> 5.
``"eq1"``
    The paper's eq. 1 as printed, ``Q(s) = floor((s - (mu - 2sigma)) / sigma) + r`` with
    ``r = 2`` for ``s > mu`` and ``r = 1`` otherwise, clipped to 1..5, evaluated in exact
    arithmetic (comparisons with ``mu + k sigma``, not a float division, which would miss
    ``s == mu`` itself for mu 3.8, sigma 0.2). Taken literally it
    gives 1 below ``mu-sigma``, 2 on ``[mu-sigma, mu)``, 3 only for ``s == mu`` exactly,
    4 on ``(mu, mu+sigma)`` and 5 from ``mu+sigma`` on: level 3 is (almost) never used and
    the outer levels are much wider than the paper's "empirical rule" wording suggests.
    Offered for reproducing the paper's text, not recommended.
``"quantile"``
    Edges at quantiles of the p-MOS set, so the levels hold set shares of the clips
    (``level_shares``; default :data:`NORMAL_LEVEL_SHARES`, the shares the five-bin rule
    gives a normal distribution: 2.3%, 13.6%, 68.3%, 13.6%, 2.3%). For a bell-shaped set
    it matches ``"five-bin"``; for a flat or bounded set, where ``mu -/+ 2 sigma`` falls
    outside the scores and levels 1 and 5 stay empty, it still fills every level.
    ``level_shares`` of 0.2 each give quintiles.
``"edges"``
    Four fixed, increasing thresholds given by the user (``level_edges``), with the same
    left-closed bins as ``"five-bin"``.

Prefixes: ``s <= low_below`` -> "low quality", ``s >= high_from`` -> "high quality",
otherwise "medium quality"; both comparisons are inclusive, as in the released loader.
By default the thresholds are ``mu -/+ 1.25 sigma``, which with the released hard-coded
``mu = 3.80``, ``sigma = 0.20`` gives exactly the released 3.55 and 4.05
(:data:`RELEASED_STATS`). The paper's own prefix rule (low below ``mu-2sigma``, medium
within ``mu+-sigma``, high above ``mu+2sigma``) leaves the scores between one and two
sigma without a prefix, so it is not used.

Statistics are fitted once, on the training set (:func:`fit_quality_stats`,
:func:`label_manifest_quality`), saved as ``quality_stats.json`` beside the manifest
(:data:`QUALITY_STATS_NAME`) and reused for fine-tuning and generation, so that level 4
means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.errors import ConfigError, QamdtError
from qamdt.quality import LEVELS, PREFIXES, QUALITY_STATS_NAME, with_prefix  # noqa: F401 - API

QUALITY_PLOT_NAME = "quality_distribution.png"
"""File name of the distribution picture drawn by :func:`run_stats`."""

LEVEL_RULES = ("five-bin", "eq1", "quantile", "edges")
"""Known level rules; see the module docstring."""

NORMAL_LEVEL_SHARES = (0.02275, 0.13591, 0.68269, 0.13591, 0.02275)
"""Shares of levels 1-5 that the five-bin rule gives a normal distribution."""

DEFAULT_PREFIX_SIGMAS = 1.25
"""Default distance of the prefix thresholds from ``mu``, in units of ``sigma``."""

_PREFIX_ARRAY = np.array(PREFIXES, dtype=object)


class QualityStatsError(QamdtError, ValueError):
    """Scores that cannot give (or be labelled with) quality statistics."""


def _finite(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    return f


def _finite_array(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        bad = s[~np.isfinite(s)].ravel()[0]
        raise QualityStatsError(f"scores must be finite to get a quality label, got {bad}")
    return s


def _rule_edges(rule: str, mu: float, sigma: float) -> tuple[float, float, float, float]:
    if rule == "eq1":
        return (mu - sigma, mu, mu, mu + sigma)
    return (mu - 2 * sigma, mu - sigma, mu + sigma, mu + 2 * sigma)


def _edges(values: Any, *, allow_equal: bool) -> tuple[float, float, float, float]:
    try:
        edges = tuple(values)
    except TypeError:
        raise ConfigError(f"level_edges must be four numbers, got {values!r}") from None
    if len(edges) != 4:
        raise ConfigError(f"level_edges must be four numbers, got {len(edges)}")
    edges = tuple(_finite(e, "level_edges") for e in edges)
    ordered = all(
        (a <= b if allow_equal else a < b) for a, b in zip(edges, edges[1:], strict=False)
    )
    if not ordered:
        raise ConfigError(f"level_edges must be increasing, got {list(edges)}")
    return edges  # type: ignore[return-value]


def _counts(d: Any, keys: tuple, name: str) -> dict:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{name} must be a mapping, got {d!r}")
    unknown = [k for k in d if k not in keys]
    if unknown:
        raise ConfigError(f"{name}: unknown keys {unknown}; expected {list(keys)}")
    out = {}
    for k in keys:
        v = d.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ConfigError(f"{name}[{k!r}] must be an integer >= 0, got {v!r}")
        out[k] = int(v)
    return out


def _check_keys(d: Mapping[str, Any], known: list[str], required: list[str], where: str) -> None:
    unknown = [k for k in d if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), known, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class SkewNormFit:
    """A skew-normal distribution fitted to a p-MOS set (``scipy.stats.skewnorm``).

    Attributes:
        a: Shape; negative for the left-skewed sets the paper reports.
        loc: Location parameter (not the mean).
        scale: Scale parameter (not the standard deviation).
        mean: Mean of the fitted distribution.
        std: Standard deviation of the fitted distribution.
        skewness: Skewness of the fitted distribution.
    """

    a: float
    loc: float
    scale: float
    mean: float
    std: float
    skewness: float

    @classmethod
    def fit(cls, scores: np.ndarray) -> SkewNormFit:
        """Fit by maximum likelihood (``scipy.stats.skewnorm.fit``).

        Args:
            scores: Finite scores, at least two distinct values.

        Returns:
            The fit and the moments of the fitted distribution.
        """
        from scipy import stats

        with warnings.catch_warnings():
            # The optimiser warns about steps into invalid regions on its way; the result
            # is checked below.
            warnings.simplefilter("ignore", RuntimeWarning)
            a, loc, scale = stats.skewnorm.fit(scores)
            mean, var, skew = stats.skewnorm.stats(a, loc=loc, scale=scale, moments="mvs")
        values = [float(v) for v in (a, loc, scale, mean, math.sqrt(max(float(var), 0)), skew)]
        if not all(math.isfinite(v) for v in values):
            raise QualityStatsError(f"the skew-normal fit did not converge (got {values})")
        return cls(*values)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """Probability density of the fitted distribution at ``x``."""
        from scipy import stats

        return stats.skewnorm.pdf(x, self.a, loc=self.loc, scale=self.scale)

    def to_dict(self) -> dict[str, float]:
        """Return the fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "skewnorm") -> SkewNormFit:
        """Build from :meth:`to_dict` output, naming unknown or missing keys.

        Args:
            d: The dict.
            where: Label for error messages.

        Raises:
            ConfigError: Unknown or missing keys, or values that are not finite numbers.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        _check_keys(d, names, names, where)
        return cls(**{n: _finite(d[n], f"{where}.{n}") for n in names})


@dataclass(frozen=True)
class QualityStats:
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

    def __post_init__(self) -> None:
        mu = _finite(self.mu, "mu")
        sigma = _finite(self.sigma, "sigma")
        if sigma <= 0:
            raise ConfigError(f"sigma must be > 0, got {sigma}")
        if self.level_rule not in LEVEL_RULES:
            raise ConfigError(
                f"level_rule must be one of {', '.join(LEVEL_RULES)}, got {self.level_rule!r}"
            )
        edges = _edges(self.level_edges, allow_equal=self.level_rule == "eq1")
        if self.level_rule not in ("edges", "quantile"):
            # Edges derived from mu and sigma must agree with them (a hand-edited file).
            expected = _rule_edges(self.level_rule, mu, sigma)
            if not all(
                math.isclose(e, x, rel_tol=1e-9, abs_tol=1e-12)
                for e, x in zip(edges, expected, strict=True)
            ):
                raise ConfigError(
                    f"level_edges {list(edges)} do not match level_rule {self.level_rule!r} "
                    f"with mu {mu} and sigma {sigma} (expected {list(expected)}); use "
                    "level_rule 'edges' for fixed thresholds"
                )
        low = _finite(self.low_below, "low_below")
        high = _finite(self.high_from, "high_from")
        if not low < high:
            raise ConfigError(f"low_below ({low}) must be below high_from ({high})")
        k = self.prefix_sigmas
        if k is not None:
            k = _finite(k, "prefix_sigmas")
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
        set_(self, "level_counts", _counts(self.level_counts, LEVELS, "level_counts"))
        set_(self, "prefix_counts", _counts(self.prefix_counts, PREFIXES, "prefix_counts"))

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
        mu = _finite(mu, "mu")
        sigma = _finite(sigma, "sigma")
        if sigma <= 0:
            raise ConfigError(f"sigma must be > 0, got {sigma}")
        if level_edges is not None:
            if level_rule not in ("five-bin", "edges", "quantile"):
                raise ConfigError(
                    f"level_edges replace the level rule; do not combine them with "
                    f"level_rule {level_rule!r}"
                )
            level_rule = "quantile" if level_rule == "quantile" else "edges"
            edges = _edges(level_edges, allow_equal=False)
        elif level_rule in ("edges", "quantile"):
            raise ConfigError(
                f"level_rule {level_rule!r} needs level_edges (four increasing numbers)"
            )
        elif level_rule in LEVEL_RULES:
            edges = _rule_edges(level_rule, mu, sigma)
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
            low = _finite(low, "prefix_thresholds[0]")
            high = _finite(high, "prefix_thresholds[1]")
            prefix_sigmas = None
        else:
            if prefix_sigmas is None:
                raise ConfigError("give prefix_sigmas or prefix_thresholds")
            prefix_sigmas = _finite(prefix_sigmas, "prefix_sigmas")
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
        s = _finite_array(scores)
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
        s = _finite_array(scores)
        # "low" is tested first; low_below < high_from, so the order only documents intent.
        return np.where(s <= self.low_below, 0, np.where(s >= self.high_from, 2, 1))

    def to_dict(self) -> dict[str, Any]:
        """Return every field as a JSON-ready dict (count keys as strings)."""
        return {
            "mu": self.mu,
            "sigma": self.sigma,
            "count": self.count,
            "level_rule": self.level_rule,
            "level_edges": list(self.level_edges),
            "low_below": self.low_below,
            "high_from": self.high_from,
            "prefix_sigmas": self.prefix_sigmas,
            "skewnorm": None if self.skewnorm is None else self.skewnorm.to_dict(),
            "level_counts": {str(k): v for k, v in self.level_counts.items()},
            "prefix_counts": dict(self.prefix_counts),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str | None = None) -> QualityStats:
        """Build statistics from :meth:`to_dict` output.

        Args:
            d: The dict.
            where: File or label to name in error messages.

        Returns:
            The statistics.

        Raises:
            ConfigError: Unknown or missing keys, or invalid values.
        """
        label = where or "quality stats"
        if not isinstance(d, Mapping):
            raise ConfigError(f"{label}: expected a JSON object, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        required = ["mu", "sigma", "level_rule", "level_edges", "low_below", "high_from"]
        _check_keys(d, names, required, label)
        values = dict(d)
        skew = values.get("skewnorm")
        if skew is not None:
            if not isinstance(skew, Mapping):
                raise ConfigError(f"{label}: skewnorm must be an object or null")
            values["skewnorm"] = SkewNormFit.from_dict(skew, f"{label}: skewnorm")
        if "level_counts" in values:
            counts = values["level_counts"]
            if not isinstance(counts, Mapping):
                raise ConfigError(f"{label}: level_counts must be an object")
            try:
                values["level_counts"] = {int(k): v for k, v in counts.items()}
            except ValueError:
                raise ConfigError(
                    f"{label}: level_counts keys must be levels 1-5, got {list(counts)}"
                ) from None
        values.setdefault("count", 0)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as JSON, atomically (temp file, fsync, rename).

        Args:
            path: Destination file; its folder is created if missing.

        Returns:
            The path written.
        """
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        _atomic_write_bytes(path, text.encode("utf-8"))
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
        level_edges = _quantile_edges(s, level_shares)
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


def _quantile_edges(scores: np.ndarray, shares: Iterable[float] | None) -> list[float]:
    shares = np.asarray(NORMAL_LEVEL_SHARES if shares is None else list(shares), dtype=float)
    if (
        shares.shape != (5,)
        or (shares <= 0).any()
        or not math.isclose(shares.sum(), 1.0, abs_tol=1e-3)
    ):
        raise ConfigError(f"level_shares must be five positive numbers summing to 1, "
                          f"got {shares.tolist()}")  # fmt: skip
    edges = np.quantile(scores, np.cumsum(shares)[:4])
    if not (np.diff(edges) > 0).all():
        raise QualityStatsError(
            f"the quantile edges {edges.tolist()} are not increasing: too many equal scores "
            "for these level shares"
        )
    return edges.tolist()


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
    return _label_manifest(manifest_path, out_path, stats, fit_kwargs)[0]


def _label_manifest(
    manifest_path: str | os.PathLike,
    out_path: str | os.PathLike | None,
    stats: QualityStats | str | os.PathLike | None,
    fit_kwargs: dict[str, Any],
) -> tuple[QualityStats, np.ndarray, int]:
    """Do :func:`label_manifest_quality`; also return the labelled scores and the row count."""
    from qamdt.manifest import read_manifest, write_manifest

    if stats is not None and fit_kwargs:
        raise ConfigError(
            f"options {', '.join(sorted(fit_kwargs))} only apply when fitting; they cannot "
            "change given stats"
        )
    if stats is not None and not isinstance(stats, QualityStats):
        stats = QualityStats.load(stats)
    manifest_path = Path(manifest_path)
    records = read_manifest(manifest_path)
    scored = [i for i, r in enumerate(records) if r.pmos is not None]
    scores = np.array([records[i].pmos for i in scored], dtype=np.float64)
    if stats is None:
        if not scored:
            raise QualityStatsError(
                f"{manifest_path}: no row has a pmos; score the clips with a MOS model first"
            )
        try:
            stats = fit_quality_stats(scores, **fit_kwargs)
        except QualityStatsError as exc:
            raise QualityStatsError(f"{manifest_path}: {exc}") from None
    if scored:
        levels = stats.levels_for(scores)
        prefixes = stats.prefixes_for(scores)
        for i, level, prefix in zip(scored, levels, prefixes, strict=True):
            records[i] = records[i].replace(quality_level=int(level), quality_prefix=str(prefix))
    out = manifest_path if out_path is None else Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, records, source_dir=manifest_path.parent)
    return stats, scores, len(records)


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
    used, scores, rows = _label_manifest(manifest, out, stats, fit_kwargs)
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

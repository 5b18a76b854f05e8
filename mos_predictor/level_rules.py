"""Quality level rules and prefix thresholds, and the checks of their values.

After a MOS model has written ``pmos`` into each manifest row, the p-MOS set of the
training data gives a mean ``mu`` and a standard deviation ``sigma``
(:class:`~mos_predictor.quality_stats.QualityStats`). Every clip then gets

* a quality level 1-5, the quality token of the diffusion model, and
* a text prefix, ``"low quality"``, ``"medium quality"`` or ``"high quality"``, prepended
  to its caption as ``"<prefix>, <caption>"`` (:func:`qamdt.quality.with_prefix`) when
  training reads it.

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
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qamdt.config import ConfigBase
from qamdt.errors import ConfigError, QamdtError

LEVEL_RULES = ("five-bin", "eq1", "quantile", "edges")
"""Known level rules; see the module docstring."""

NORMAL_LEVEL_SHARES = (0.02275, 0.13591, 0.68269, 0.13591, 0.02275)
"""Shares of levels 1-5 that the five-bin rule gives a normal distribution."""

DEFAULT_PREFIX_SIGMAS = 1.25
"""Default distance of the prefix thresholds from ``mu``, in units of ``sigma``."""


class QualityStatsError(QamdtError, ValueError):
    """Scores that cannot give (or be labelled with) quality statistics."""


def finite_number(v: Any, name: str) -> float:
    """A setting as a float, checked to be a finite real number.

    Args:
        v: The value.
        name: The setting, for the message.

    Returns:
        ``float(v)``.

    Raises:
        ConfigError: If ``v`` is not a finite int or float (bools are refused).
    """
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    return f


def finite_scores(scores: Any) -> np.ndarray:
    """Scores as a float64 array, checked to be finite.

    Args:
        scores: Array-like scores, any shape.

    Returns:
        The float64 array.

    Raises:
        QualityStatsError: Naming the first score that is not finite.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        bad = s[~np.isfinite(s)].ravel()[0]
        raise QualityStatsError(f"scores must be finite to get a quality label, got {bad}")
    return s


def rule_edges(rule: str, mu: float, sigma: float) -> tuple[float, float, float, float]:
    """The four level edges that ``"five-bin"`` or ``"eq1"`` gives (module docstring).

    Args:
        rule: The level rule.
        mu: Mean p-MOS.
        sigma: Standard deviation.

    Returns:
        The edges between levels 1|2, 2|3, 3|4 and 4|5.
    """
    if rule == "eq1":
        return (mu - sigma, mu, mu, mu + sigma)
    return (mu - 2 * sigma, mu - sigma, mu + sigma, mu + 2 * sigma)


def checked_edges(values: Any, *, allow_equal: bool) -> tuple[float, float, float, float]:
    """Level edges, checked.

    Args:
        values: Four numbers.
        allow_equal: Accept equal neighbours (the ``"eq1"`` rule's edges).

    Returns:
        The edges as a tuple of floats.

    Raises:
        ConfigError: If they are not four finite numbers in increasing order.
    """
    try:
        edges = tuple(values)
    except TypeError:
        raise ConfigError(f"level_edges must be four numbers, got {values!r}") from None
    if len(edges) != 4:
        raise ConfigError(f"level_edges must be four numbers, got {len(edges)}")
    edges = tuple(finite_number(e, "level_edges") for e in edges)
    ordered = all(
        (a <= b if allow_equal else a < b) for a, b in zip(edges, edges[1:], strict=False)
    )
    if not ordered:
        raise ConfigError(f"level_edges must be increasing, got {list(edges)}")
    return edges  # type: ignore[return-value]


def checked_counts(d: Any, keys: tuple, name: str) -> dict:
    """Label counts, checked.

    Args:
        d: Counts by key.
        keys: The allowed keys.
        name: The field, for messages.

    Returns:
        A count for every key of ``keys`` (0 where ``d`` has none).

    Raises:
        ConfigError: On an unknown key or a count that is not an integer >= 0.
    """
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


def quantile_edges(scores: np.ndarray, shares: Iterable[float] | None) -> list[float]:
    """Level edges of the ``"quantile"`` rule.

    Args:
        scores: Finite scores.
        shares: Shares of levels 1-5 (five positive numbers summing to 1); ``None`` is
            :data:`NORMAL_LEVEL_SHARES`.

    Returns:
        The four edges: quantiles of ``scores`` at the cumulative shares.

    Raises:
        ConfigError: On invalid shares.
        QualityStatsError: If the edges are not increasing (too many equal scores).
    """
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


@dataclass(frozen=True)
class SkewNormFit(ConfigBase):
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

    config_where = "skewnorm"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, finite_number(getattr(self, f.name), f.name))

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

"""The degradation family: named kinds, chains of them, and the reference-quality model.

Reference quality. A clip that starts at quality ``Q0`` (5 for a clean recording; a corpus
clip's own simulated quality otherwise) and then goes through degradations of severities
``s_k`` has the simulated reference quality

    Q = 1 + (Q0 - 1) * prod_k (1 - s_k)

Every kind's severity is on one perceptual scale (see :mod:`qamdt.degradations.effects`):
``s = 0`` untouched, ``s = 0.5`` clearly audible damage, ``s = 1`` bad; so a single
degradation maps severity to quality the same way for every kind (``Q = 5 - 4 s`` on a
clean recording) and several compound multiplicatively, as the corpus's degradations do
(``qamdt.corpus.degrade``, whose kinds carry an extra weight ``w_k``). Q is simulated from
the recipe, not rated by listeners.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from . import codecs, effects

KINDS: dict[str, Callable] = {
    "mp3": codecs.mp3,
    "vorbis": codecs.vorbis,
    "opus": codecs.opus,
    "aliasing": effects.aliasing,
    "bandpass": effects.bandpass,
    "eq_tilt": effects.eq_tilt,
    "bit_depth": effects.bit_depth,
    "dynamics": effects.dynamics,
    "soft_clip": effects.soft_clip,
    "coloured_noise": effects.coloured_noise,
    "hum": effects.hum,
    "crackle": effects.crackle,
    "reverb": effects.reverb,
    "wow_flutter": effects.wow_flutter,
    "dropouts": effects.dropouts,
    "packet_loss": effects.packet_loss,
    "denoise": effects.denoise,
    "time_stretch": effects.time_stretch,
    "mono_fold": effects.mono_fold,
}

CODEC_KINDS = ("mp3", "vorbis", "opus")

# The order a recording chain meets them in: the room, the performance's processing, the
# medium, the channel. A chain is applied in this order whatever order it was drawn in.
CHAIN_ORDER = (
    "reverb",
    "mono_fold",
    "eq_tilt",
    "dynamics",
    "soft_clip",
    "hum",
    "coloured_noise",
    "denoise",
    "time_stretch",
    "wow_flutter",
    "crackle",
    "bandpass",
    "aliasing",
    "bit_depth",
    "mp3",
    "vorbis",
    "opus",
    "dropouts",
    "packet_loss",
)


def check_kinds(kinds: Sequence[str], field: str = "kinds") -> tuple[str, ...]:
    """Checks degradation kind names.

    Args:
        kinds: Names.
        field: The setting they come from, for the message.

    Returns:
        The names as a tuple.

    Raises:
        ValueError: On an unknown name, naming it, the field and the known kinds.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"{field}: unknown degradation kind(s) {unknown}; known: {sorted(KINDS)}")
    return tuple(kinds)


def reference_quality(applied: Sequence[dict], base: float = 5.0) -> float:
    """Simulated reference quality after degradations.

    Args:
        applied: Entries with a ``severity`` in [0, 1], as :func:`apply_chain` records.
        base: Quality before them (5 for a clean recording).

    Returns:
        ``1 + (base - 1) * prod(1 - severity)``, rounded to 4 decimals.
    """
    remaining = 1.0
    for item in applied:
        remaining *= 1.0 - float(item["severity"])
    return round(1.0 + (float(base) - 1.0) * remaining, 4)


@dataclasses.dataclass(frozen=True)
class ChainSettings:
    """How degradation chains are drawn.

    Attributes:
        kinds: Kinds to draw from.
        count_weights: Relative odds of chains of 1, 2, 3, ... kinds.
        min_severity: Lower end of the uniform severity draw.
        max_severity: Upper end.
    """

    kinds: tuple[str, ...] = tuple(KINDS)
    count_weights: tuple[float, ...] = (0.7, 0.22, 0.08)
    min_severity: float = 0.05
    max_severity: float = 1.0

    def __post_init__(self):
        check_kinds(self.kinds)
        if not self.kinds:
            raise ValueError("kinds: give at least one degradation kind")
        if not 0.0 <= self.min_severity <= self.max_severity <= 1.0:
            raise ValueError("need 0 <= min_severity <= max_severity <= 1")
        if not self.count_weights or min(self.count_weights) < 0 or sum(self.count_weights) <= 0:
            raise ValueError("count_weights: give non-negative odds, not all zero")


def draw_chain(rng: np.random.Generator, settings: ChainSettings) -> list[tuple[str, float]]:
    """Draws kinds (without repeats) and severities for one degraded version.

    Args:
        rng: Seeded generator.
        settings: What to draw from.

    Returns:
        ``[(kind, severity), ...]`` in :data:`CHAIN_ORDER`.
    """
    weights = np.asarray(settings.count_weights[: len(settings.kinds)], dtype=np.float64)
    count = 1 + int(rng.choice(weights.size, p=weights / weights.sum()))
    kinds = [str(k) for k in rng.choice(settings.kinds, size=count, replace=False)]
    kinds.sort(key=CHAIN_ORDER.index)
    return [
        (kind, round(float(rng.uniform(settings.min_severity, settings.max_severity)), 4))
        for kind in kinds
    ]


def apply_chain(
    x: np.ndarray, sr: int, chain: Sequence[tuple[str, float]], rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """Applies degradations in order.

    Args:
        x: Mono clip (float).
        sr: Its rate.
        chain: ``(kind, severity)`` pairs, applied in the given order.
        rng: Seeded generator for the kinds' random choices.

    Returns:
        The degraded clip (float32, peak at most 0.99, same length) and the applied
        degradations, each ``{"type", "severity", "params"}``.
    """
    y = np.asarray(x, dtype=np.float64)
    applied = []
    for kind, severity in chain:
        y, params = KINDS[kind](y, sr, float(severity), rng)
        y = np.nan_to_num(np.asarray(y, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        applied.append({"type": kind, "severity": float(severity), "params": params})
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 0.99:
        y = y * (0.99 / peak)
    return y.astype(np.float32), applied

"""The generalisation protocol of ``qamdt mos eval --protocol``.

A MOS model is trained with whole real-music sources and whole degradation families held
out (``holdout_sources``, ``holdout_families`` of its training config). The protocol then
takes excerpts of the held-out sources only and

* scores them clean: their mean p-MOS should be high, and above the mean of every
  degradation kind at its strongest severity;
* applies every degradation kind alone at graded severities (0.2, 0.4, ..., 1.0; the same
  random choices, such as a noise colour, at every severity of one excerpt) and reports,
  per kind, the Spearman correlation between severity and p-MOS over all excerpts and
  severities ("within-kind SRCC"; ideally -1, reported with the sign flipped so that 1 is
  a perfect ranking), and the mean of the per-excerpt correlations.

Kinds held out of training measure generalisation to unseen damage on unseen music;
the other kinds measure generalisation to unseen music alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mos_predictor.real_music import plan_excerpts, read_excerpt
from mos_predictor.versions import check_codec_tools, degrade_task, run_tasks
from qamdt.audio_io import normalize_waveform
from qamdt.degradations import KINDS, check_kinds
from qamdt.errors import ConfigError

TRAIN_CONFIG_NAME = "train_config.json"


@dataclasses.dataclass(frozen=True)
class ProtocolSettings:
    """What the protocol measures on.

    Attributes:
        sources: Held-out real-music sources.
        holdout_families: Kinds held out of training.
        severities: Severities each kind is applied at.
        excerpts_per_file: Excerpts per file of the held-out sources.
        seed: Seed of the excerpt positions and the kinds' random choices.
        workers: Processes that apply the degradations.
        min_kbps_per_channel: Files coded below this bitrate per channel are not clean
            recordings and are left out (None: all files).
        excerpt_seconds: Length of each excerpt (None: the model's window). A longer
            excerpt is scored as any clip is, its windows averaged: the length of the clips
            a user labels.
    """

    sources: tuple[str, ...]
    holdout_families: tuple[str, ...]
    severities: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    excerpts_per_file: int = 1
    seed: int = 1234
    workers: int = 2
    min_kbps_per_channel: float | None = None
    excerpt_seconds: float | None = None

    def __post_init__(self):
        if not self.sources:
            raise ConfigError("protocol: no held-out sources (train with holdout_sources)")
        check_kinds(self.holdout_families, "holdout_families")
        if len(self.severities) < 2 or not all(0 < s <= 1 for s in self.severities):
            raise ConfigError("protocol: give at least two severities in (0, 1]")
        if self.excerpts_per_file < 1:
            raise ConfigError("protocol: excerpts_per_file must be >= 1")
        if self.min_kbps_per_channel is not None and self.min_kbps_per_channel < 0:
            raise ConfigError("protocol: --min-kbps-per-channel must be >= 0")
        if self.excerpt_seconds is not None and self.excerpt_seconds <= 0:
            raise ConfigError("protocol: --excerpt-seconds must be > 0")


def recorded_holdouts(model_dir: str | Path) -> dict[str, Any]:
    """The hold-outs a model was trained with, from its folder's ``train_config.json``.

    Returns:
        ``{"holdout_sources": [...], "holdout_families": [...],
        "real_min_kbps_per_channel": float or None}``; empty lists and None when the
        folder has no training config.
    """
    path = Path(model_dir) / TRAIN_CONFIG_NAME
    saved = {}
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
    recorded: dict[str, Any] = {
        k: list(saved.get(k) or []) for k in ("holdout_sources", "holdout_families")
    }
    recorded["real_min_kbps_per_channel"] = saved.get("real_min_kbps_per_channel")
    return recorded


def settings_for_model(
    model_dir: str | Path,
    sources: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    min_kbps_per_channel: float | None = None,
    **fields: Any,
) -> ProtocolSettings:
    """The protocol's settings for a model, its recorded hold-outs filling what is not given.

    Args:
        model_dir: The model's folder (:func:`recorded_holdouts`).
        sources: Held-out sources (None or empty: the recorded ones).
        families: Held-out kinds (None: the recorded ones).
        min_kbps_per_channel: Bitrate floor of the clean recordings (None: the recorded one).
        **fields: Other :class:`ProtocolSettings` fields.

    Raises:
        ConfigError: As :class:`ProtocolSettings`, e.g. when no held-out source is given
            or recorded.
    """
    recorded = recorded_holdouts(model_dir)
    return ProtocolSettings(
        sources=tuple(sources or recorded["holdout_sources"]),
        holdout_families=tuple(recorded["holdout_families"] if families is None else families),
        min_kbps_per_channel=(
            recorded["real_min_kbps_per_channel"]
            if min_kbps_per_channel is None
            else min_kbps_per_channel
        ),
        **fields,
    )


def _kind_seed(seed: int, index: int, kind: str) -> int:
    digest = hashlib.sha1(f"{seed}:{index}:{kind}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y)[0])


@dataclasses.dataclass
class ProtocolClips:
    """The protocol's audio: clean held-out excerpts and every kind at every severity.

    Attributes:
        clean: The clean excerpts, as read (mono, the model's rate).
        degraded: ``{(kind, severity, excerpt index): normalised wave}``.
        failures: Per kind, ``"excerpt i, severity s: reason"`` for each version that
            could not be made.
        unreadable: Files that could not be read.
        skipped: Files below the bitrate floor.
    """

    clean: list[np.ndarray]
    degraded: dict[tuple, np.ndarray]
    failures: dict[str, list[str]]
    unreadable: list[str]
    skipped: list[str]

    def waves(self) -> list[np.ndarray]:
        """The clips in the order :func:`run_protocol` scores them: clean, then degraded."""
        return [normalize_waveform(w) for w in self.clean] + list(self.degraded.values())


def read_clean_excerpts(
    settings: ProtocolSettings, sample_rate: int, window_seconds: float
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Reads the held-out sources' clean excerpts, as the protocol takes them.

    Args:
        settings: Sources, excerpts per file, seed, bitrate floor and excerpt length.
        sample_rate: The model's rate.
        window_seconds: The model's window, the excerpt length unless
            ``settings.excerpt_seconds`` is set.

    Returns:
        The excerpts (mono, ``sample_rate``), the files that could not be read and the
        files below the bitrate floor (``"path: reason"`` each).

    Raises:
        ConfigError: If no held-out excerpt can be used, or the excerpts would be shorter
            than the window.
    """
    seconds = settings.excerpt_seconds or window_seconds
    if seconds < window_seconds:
        raise ConfigError(
            f"protocol: --excerpt-seconds {seconds:g} is shorter than the model's "
            f"{window_seconds:g} s window"
        )
    unreadable: list[str] = []
    skipped: list[str] = []
    planned = plan_excerpts(
        settings.sources,
        settings.excerpts_per_file,
        seconds,
        settings.seed,
        failures=unreadable,
        min_kbps_per_channel=settings.min_kbps_per_channel,
        skipped=skipped,
    )
    clean = []
    for excerpt in planned:
        wave = read_excerpt(excerpt, sample_rate)
        if wave is not None:
            clean.append(wave)
    if not clean:
        raise ConfigError(f"protocol: no usable excerpt in {list(settings.sources)}")
    return clean, unreadable, skipped


def make_protocol_clips(
    settings: ProtocolSettings, sample_rate: int, window_seconds: float, progress: bool = False
) -> ProtocolClips:
    """Reads the held-out excerpts and applies every kind at every severity.

    Args:
        settings: Sources, severities, seed, workers and excerpt length.
        sample_rate: The model's rate.
        window_seconds: The model's window, the excerpt length unless
            ``settings.excerpt_seconds`` is set.
        progress: Show a progress bar.

    Raises:
        ConfigError: As :func:`read_clean_excerpts`.
        CodecError: If a codec kind's tool is missing.
    """
    clean, unreadable, skipped = read_clean_excerpts(settings, sample_rate, window_seconds)
    kinds = list(KINDS)
    check_codec_tools(kinds)
    tasks = [
        ((kind, s, i), wave, sample_rate, [(kind, s)], _kind_seed(settings.seed, i, kind))
        for kind in kinds
        for s in settings.severities
        for i, wave in enumerate(clean)
    ]
    degraded: dict[tuple, np.ndarray] = {}
    failures: dict[str, list[str]] = {k: [] for k in kinds}
    for key, wave, applied in run_tasks(
        degrade_task, tasks, settings.workers, progress, "protocol degradations"
    ):
        if wave is None:
            failures[key[0]].append(f"excerpt {key[2]}, severity {key[1]}: {applied}")
        else:
            degraded[key] = wave
    return ProtocolClips(clean, degraded, failures, unreadable, skipped)


def run_protocol(
    model,
    settings: ProtocolSettings,
    batch_size: int = 16,
    progress: bool = False,
    clips: ProtocolClips | None = None,
) -> dict[str, Any]:
    """Runs the protocol on a model.

    Args:
        model: A ``MosModel`` (anything with its ``config`` and ``predict``).
        settings: Sources, held-out kinds, severities.
        batch_size: Windows per forward pass.
        progress: Show progress bars.
        clips: The protocol's audio, made once for several models
            (:func:`make_protocol_clips` with the model's rate and window); None makes it.

    Returns:
        ``{"clean": {"mean", "count"}, "unreadable", "skipped" (files below the bitrate
        floor), "kinds": {kind: {...}}, "summary": {...}}``; each
        kind has ``held_out``, ``srcc`` (pooled, sign flipped), ``within_srcc`` (mean per
        excerpt), ``mean_by_severity`` and ``failures``.
    """
    if clips is None:
        config = model.config
        clips = make_protocol_clips(settings, config.sample_rate, config.window_seconds, progress)
    predicted = model.predict(clips.waves(), model.config.sample_rate, batch_size=batch_size)
    return score_protocol(clips, [s["omq"] for s in predicted], settings)


def score_protocol(
    clips: ProtocolClips, scores: Sequence[float], settings: ProtocolSettings
) -> dict[str, Any]:
    """The protocol's result from the scores of ``clips.waves()``, as :func:`run_protocol`."""
    clean, kinds, failures = clips.clean, list(KINDS), clips.failures
    if len(scores) != len(clean) + len(clips.degraded):
        raise ValueError(f"got {len(scores)} scores for {len(clean) + len(clips.degraded)} clips")
    clean_scores = np.array(scores[: len(clean)])
    by_key = dict(zip(clips.degraded, scores[len(clean) :], strict=True))

    per_kind = {}
    for kind in kinds:
        rows = [(k[1], k[2], v) for k, v in by_key.items() if k[0] == kind]
        severity = np.array([r[0] for r in rows])
        pmos = np.array([r[2] for r in rows])
        within = []
        for i in range(len(clean)):
            mine = [(r[0], r[2]) for r in rows if r[1] == i]
            if len(mine) >= 2:
                value = _spearman([m[0] for m in mine], [m[1] for m in mine])
                if np.isfinite(value):
                    within.append(-value)
        per_kind[kind] = {
            "held_out": kind in settings.holdout_families,
            "srcc": -_spearman(severity, pmos) if len(rows) >= 2 else math.nan,
            "within_srcc": float(np.mean(within)) if within else math.nan,
            "mean_by_severity": {
                str(s): float(pmos[severity == s].mean()) if np.any(severity == s) else math.nan
                for s in settings.severities
            },
            "failures": failures[kind],
        }
    return {
        "settings": dataclasses.asdict(settings),
        "clean": {"mean": float(clean_scores.mean()), "count": len(clean)},
        "unreadable": clips.unreadable,
        "skipped": clips.skipped,
        "kinds": per_kind,
        "summary": summarise(per_kind, float(clean_scores.mean()), settings.severities),
    }


def summarise(per_kind: dict, clean_mean: float, severities: Sequence[float]) -> dict:
    """The protocol's headline figures from the per-kind results."""
    strongest = str(max(severities))

    def mean_of(held_out: bool, key: str) -> float:
        values = [v[key] for v in per_kind.values() if v["held_out"] == held_out]
        values = [x for x in values if np.isfinite(x)]
        return float(np.mean(values)) if values else math.nan

    worst = {k: v["mean_by_severity"][strongest] for k, v in per_kind.items()}
    highest = max(worst, key=lambda k: worst[k])
    return {
        "clean_mean": clean_mean,
        "heldout_families_srcc": mean_of(True, "srcc"),
        "heldout_families_within_srcc": mean_of(True, "within_srcc"),
        "trained_families_srcc": mean_of(False, "srcc"),
        "trained_families_within_srcc": mean_of(False, "within_srcc"),
        "highest_strongest_kind": highest,
        "highest_strongest_mean": worst[highest],
        "clean_above_every_strongest": bool(clean_mean > worst[highest]),
    }


def format_protocol(result: dict) -> str:
    """The protocol's result as a table, one row per kind, then the summary."""
    severities = [str(s) for s in result["settings"]["severities"]]
    header = ["kind", "held out", "SRCC", "within", *[f"s={s}" for s in severities]]
    rows = []
    ordered = sorted(result["kinds"].items(), key=lambda kv: (not kv[1]["held_out"], kv[0]))
    for kind, row in ordered:
        means = [f"{row['mean_by_severity'][s]:.2f}" for s in severities]
        held = "yes" if row["held_out"] else ""
        rows.append([kind, held, f"{row['srcc']:.3f}", f"{row['within_srcc']:.3f}", *means])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        cells = [r[0].ljust(widths[0]), *rest]
        lines.append("  ".join(cells))
    s = result["summary"]
    left_out = len(result.get("skipped", []))
    files = "file" if left_out == 1 else "files"
    below = f"; {left_out} {files} below the bitrate floor left out" if left_out else ""
    lines += [
        f"clean held-out recordings: mean p-MOS {s['clean_mean']:.3f} "
        f"({result['clean']['count']} excerpts{below})",
        f"held-out families: within-kind SRCC {s['heldout_families_srcc']:.3f} "
        f"(per excerpt {s['heldout_families_within_srcc']:.3f})",
        f"trained families on held-out sources: within-kind SRCC "
        f"{s['trained_families_srcc']:.3f} (per excerpt {s['trained_families_within_srcc']:.3f})",
        f"highest mean at the strongest severity: {s['highest_strongest_mean']:.3f} "
        f"({s['highest_strongest_kind']}); clean above every kind's strongest: "
        f"{'yes' if s['clean_above_every_strongest'] else 'no'}",
    ]
    return "\n".join(lines)

"""Summary statistics of a manifest, and their rendering as a text table."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from qamdt.manifest.record import (
    CAPTION_SOURCES,
    QUALITY_LEVELS,
    QUALITY_PREFIXES,
    SPLITS,
    ClipRecord,
)


def _present(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


def _zero_counts(allowed: Iterable[Any]) -> Counter:
    """Zero counts for a field's allowed values (as strings), then ``"unset"`` for None."""
    return Counter({**{str(v): 0 for v in allowed if v is not None}, "unset": 0})


def summarize(records: Iterable[ClipRecord]) -> dict[str, Any]:
    """Count what a manifest holds, in one streaming pass.

    Captions count as present when they are non-blank strings. The p-MOS ``std`` is the
    population standard deviation. Statistics of empty sets are None.

    Args:
        records: The records (any iterable, e.g. :func:`iter_manifest`).

    Returns:
        A JSON-serialisable dict with the keys ``clips``, ``splits``, ``duration``,
        ``captions``, ``clap``, ``pmos``, ``quality_level``, ``quality_prefix`` and
        ``errors``; every dict key is a string.
    """
    clips = 0
    splits = Counter(dict.fromkeys(SPLITS, 0))
    dur_known = 0
    dur_total = 0.0
    captions = {"original": 0, "original_missing": 0, "generated": 0, "final": 0}
    sources = _zero_counts(CAPTION_SOURCES)
    clap_sums: dict[str, list[float]] = {}
    pm_n = 0
    pm_mean = 0.0
    pm_m2 = 0.0
    pm_min = math.inf
    pm_max = -math.inf
    levels = _zero_counts(QUALITY_LEVELS)
    prefixes = _zero_counts(QUALITY_PREFIXES)
    error_rows = 0
    error_stages: Counter = Counter()

    for r in records:
        clips += 1
        splits[r.split] += 1
        if r.duration is not None:
            dur_known += 1
            dur_total += r.duration
        if _present(r.original_caption):
            captions["original"] += 1
        else:
            captions["original_missing"] += 1
        captions["generated"] += _present(r.generated_caption)
        captions["final"] += _present(r.final_caption)
        sources["unset" if r.caption_source is None else r.caption_source] += 1
        for name, score in r.clap.items():
            acc = clap_sums.setdefault(name, [0, 0.0])
            acc[0] += 1
            acc[1] += score
        if r.pmos is not None:
            # Welford's update: stable for millions of values.
            pm_n += 1
            delta = r.pmos - pm_mean
            pm_mean += delta / pm_n
            pm_m2 += delta * (r.pmos - pm_mean)
            pm_min = min(pm_min, r.pmos)
            pm_max = max(pm_max, r.pmos)
        levels["unset" if r.quality_level is None else str(r.quality_level)] += 1
        prefixes["unset" if r.quality_prefix is None else r.quality_prefix] += 1
        if r.errors:
            error_rows += 1
            for stage in r.errors:
                error_stages[stage] += 1

    return {
        "clips": clips,
        "splits": dict(splits),
        "duration": {
            "known": dur_known,
            "missing": clips - dur_known,
            "total_seconds": dur_total,
            "total_hours": dur_total / 3600.0,
            "mean_seconds": dur_total / dur_known if dur_known else None,
        },
        "captions": {**captions, "source": dict(sources)},
        "clap": {
            name: {"count": n, "mean": total / n} for name, (n, total) in sorted(clap_sums.items())
        },
        "pmos": {
            "count": pm_n,
            "mean": pm_mean if pm_n else None,
            "std": math.sqrt(pm_m2 / pm_n) if pm_n else None,
            "min": pm_min if pm_n else None,
            "max": pm_max if pm_n else None,
        },
        "quality_level": dict(levels),
        "quality_prefix": dict(prefixes),
        "errors": {"rows": error_rows, "stages": dict(sorted(error_stages.items()))},
    }


def _count(n: int, total: int) -> str:
    return f"{n:,} ({100.0 * n / total:.1f}%)" if total else f"{n:,}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def format_summary(summary: Mapping[str, Any]) -> str:
    """Render :func:`summarize` output as an aligned two-column text table.

    Args:
        summary: The dict returned by :func:`summarize` (or the same loaded from JSON).

    Returns:
        The table, one line per row, without a trailing newline.
    """
    n = summary["clips"]
    rows: list[tuple[str, str]] = [("clips", f"{n:,}")]
    for split, c in summary["splits"].items():
        rows.append((f"  {split}", _count(c, n)))

    dur = summary["duration"]
    rows.append(("duration", f"{dur['total_hours']:.2f} h ({dur['total_seconds']:,.1f} s)"))
    rows.append(("  mean", f"{_num(dur['mean_seconds'], '.2f')} s"))
    rows.append(("  known", _count(dur["known"], n)))
    rows.append(("  missing", _count(dur["missing"], n)))

    cap = summary["captions"]
    rows.append(("captions", ""))
    rows.append(("  original", _count(cap["original"], n)))
    rows.append(("  original missing", _count(cap["original_missing"], n)))
    rows.append(("  generated", _count(cap["generated"], n)))
    rows.append(("  final", _count(cap["final"], n)))
    for source, c in cap["source"].items():
        rows.append((f"  source {source}", _count(c, n)))

    if summary["clap"]:
        rows.append(("CLAP (mean)", ""))
        for name, s in summary["clap"].items():
            rows.append((f"  {name}", f"{_num(s['mean'])} over {s['count']:,}"))

    pm = summary["pmos"]
    rows.append(("p-MOS", _count(pm["count"], n)))
    if pm["count"]:
        rows.append(("  mean +- std", f"{_num(pm['mean'])} +- {_num(pm['std'])}"))
        rows.append(("  min .. max", f"{_num(pm['min'])} .. {_num(pm['max'])}"))

    rows.append(("quality level", ""))
    for level, c in summary["quality_level"].items():
        rows.append((f"  {level}", _count(c, n)))
    rows.append(("quality prefix", ""))
    for prefix, c in summary["quality_prefix"].items():
        rows.append((f"  {prefix}", _count(c, n)))

    err = summary["errors"]
    rows.append(("rows with errors", _count(err["rows"], n)))
    for stage, c in err["stages"].items():
        rows.append((f"  {stage}", f"{c:,}"))

    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)

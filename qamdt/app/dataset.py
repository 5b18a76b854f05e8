"""The Dataset tab's work: a manifest's labels as plots, and its rows filtered for the table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from qamdt.app.generate import InputError
from qamdt.manifest.record import CAPTION_SOURCES, SPLITS
from qamdt.quality import LEVELS

ALL = "all"
UNSET = "unset"
MAX_TABLE_ROWS = 500
"""Rows the table shows at most; the page says how many matched."""

COLUMNS = [
    "id",
    "split",
    "level",
    "p-MOS",
    "branch",
    "CLAP original",
    "CLAP generated",
    "original caption",
    "final caption",
]
"""The table's columns; ``branch`` is the row's ``caption_source`` (refinement branch)."""

CLAP_KEYS = {"original caption": "original_audio", "generated caption": "generated_audio"}
"""Plot label -> the manifest's ``clap`` key written by ``qamdt captions refine``."""

LEVEL_CHOICES = [ALL, *(str(level) for level in LEVELS), UNSET]
SPLIT_CHOICES = [ALL, *SPLITS]
BRANCH_CHOICES = [ALL, *(s for s in CAPTION_SOURCES if s is not None), UNSET]


class DatasetView:
    """A manifest read once, with its plots drawn once.

    Args:
        manifest: The JSONL manifest.
        stats: Quality statistics whose level edges the p-MOS plot marks, or None.
        out_dir: Where the plots go.

    Raises:
        QamdtError: Naming the manifest's file, line and field when a row is invalid.
    """

    def __init__(self, manifest: Path, stats, out_dir: Path):
        from qamdt.app.plots import clap_histogram_png, level_counts_png, pmos_histogram_png
        from qamdt.manifest import read_manifest

        self.manifest = Path(manifest)
        self.records = read_manifest(self.manifest)
        self.by_id = {r.id: r for r in self.records}
        pmos = [r.pmos for r in self.records if r.pmos is not None]
        self.level_counts = Counter(r.quality_level for r in self.records if r.quality_level)
        self.pmos_plot = pmos_histogram_png(pmos, stats, out_dir / "pmos.png") if pmos else None
        self.levels_plot = level_counts_png(self.level_counts, out_dir / "levels.png")
        self.clap = {
            label: [r.clap[key] for r in self.records if key in r.clap]
            for label, key in CLAP_KEYS.items()
        }
        self.clap_plot = (
            clap_histogram_png(self.clap, out_dir / "clap.png") if any(self.clap.values()) else None
        )

    def summary(self) -> str:
        """A short Markdown summary of the manifest's labels."""
        counts = ", ".join(f"{level}: {self.level_counts.get(level, 0)}" for level in LEVELS)
        splits = Counter(r.split for r in self.records)
        branches = Counter(r.caption_source or UNSET for r in self.records)
        lines = [
            f"**{self.manifest}**: {len(self.records)} clips "
            f"({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))})",
            f"- clips per level: {counts}",
            f"- refinement branches: {', '.join(f'{k} {v}' for k, v in sorted(branches.items()))}",
        ]
        for label, values in self.clap.items():
            if values:
                mean = sum(values) / len(values)
                lines.append(f"- CLAP, {label}: mean {mean:.3f} over {len(values)} clips")
        return "\n".join(lines)

    def rows(self, level: str = ALL, split: str = ALL, branch: str = ALL) -> tuple[list, int]:
        """Table rows matching the filters, and how many matched in all.

        Raises:
            InputError: Naming a filter with an unknown value.
        """
        for name, value, choices in (
            ("Level", level, LEVEL_CHOICES),
            ("Split", split, SPLIT_CHOICES),
            ("Branch", branch, BRANCH_CHOICES),
        ):
            if value not in choices:
                raise InputError(f"{name}: unknown {value!r}; choose one of {choices}")
        matched = [
            r
            for r in self.records
            if (level == ALL or str(r.quality_level or UNSET) == level)
            and (split == ALL or r.split == split)
            and (branch == ALL or (r.caption_source or UNSET) == branch)
        ]
        return [self._row(r) for r in matched[:MAX_TABLE_ROWS]], len(matched)

    @staticmethod
    def _row(record) -> list[Any]:
        def rounded(value):
            return None if value is None else round(float(value), 4)

        return [
            record.id,
            record.split,
            record.quality_level,
            rounded(record.pmos),
            record.caption_source or UNSET,
            rounded(record.clap.get("original_audio")),
            rounded(record.clap.get("generated_audio")),
            record.original_caption or "",
            record.final_caption or "",
        ]

    def audio_path(self, clip_id: str) -> Path:
        """The audio file of a row.

        Raises:
            InputError: For an id the manifest does not hold, or a missing file.
        """
        record = self.by_id.get(clip_id)
        if record is None:
            raise InputError(f"Clip: no row with id {clip_id!r} in {self.manifest}")
        path = record.audio_path(self.manifest.parent)
        if not path.is_file():
            raise InputError(f"Clip {clip_id}: audio file {path} is missing")
        return path

    def record(self, clip_id: str):
        """The manifest row of an id (see :meth:`audio_path` for the errors)."""
        self.audio_path(clip_id)
        return self.by_id[clip_id]

"""What the demo's stages share: the run folder's manifest and small helpers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "corpus/manifest.jsonl"


def manifest_path(out: Path) -> Path:
    """The corpus manifest of run folder ``out``."""
    return out / MANIFEST


def judge_model(out: Path, settings) -> Path:
    """The run's p-MOS judge of generated audio: its own model, or the labelling one."""
    return out / "models" / ("mos" if settings.judge_config is None else "judge")


def read_records(out: Path):
    """The records of the run's corpus manifest."""
    from qamdt.manifest import read_manifest

    return read_manifest(manifest_path(out))


def copy_tree(source: Path, target: Path) -> None:
    """Replaces ``target`` with a copy of ``source``."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)


def split_counts(records) -> dict[str, int]:
    """Clips per split."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.split] = counts.get(record.split, 0) + 1
    return counts


def is_clean(record) -> bool:
    """Whether the corpus left the clip undegraded."""
    return record.meta.get("degradations") == []


def rewrite_manifest(out: Path, change: Callable[[Any], Any]) -> None:
    """Rewrites the run's manifest with ``change`` applied to every record."""
    from qamdt.manifest import write_manifest

    manifest = manifest_path(out)
    if manifest.is_file():
        write_manifest(manifest, [change(r) for r in read_records(out)])

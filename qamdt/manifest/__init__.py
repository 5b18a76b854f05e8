"""The clip manifest: every label a clip gets, one JSON object per line.

A manifest is a JSONL file with one row per clip (:class:`ClipRecord`). Each stage of the
pipeline (p-MOS labelling, caption refinement, training) reads it and writes it back,
possibly from several processes that each write a shard, merged afterwards with
:func:`merge_manifests`.

Audio paths are stored relative to the folder that holds the manifest, with POSIX
separators, so a dataset folder can be moved or copied as a whole. Readers stream
(:func:`iter_manifest`), writers replace files atomically (:func:`write_manifest`), and
:class:`ManifestAppender` supports resumable, crash-tolerant appends.

Modules: ``record`` (the row and its validation), ``reading``, ``writing``, ``appender``,
``shards`` (merging and splitting), ``ids`` (unique ids in bounded memory), ``stages`` and
``stage_state`` (resumable stages), ``parts`` (``--shard I/N`` part files), ``create`` and
``summary``.
"""

from qamdt.manifest.appender import ManifestAppender
from qamdt.manifest.reading import (
    ManifestWarning,
    find_manifest_errors,
    iter_manifest,
    read_manifest,
)
from qamdt.manifest.record import (
    CAPTION_SOURCES,
    QUALITY_LEVELS,
    QUALITY_PREFIXES,
    REQUIRED_FIELDS,
    SPLITS,
    ClipRecord,
)
from qamdt.manifest.shards import MergeStats, merge_manifests, shard_records
from qamdt.manifest.summary import format_summary, summarize
from qamdt.manifest.writing import write_manifest

__all__ = [
    "CAPTION_SOURCES",
    "QUALITY_LEVELS",
    "QUALITY_PREFIXES",
    "REQUIRED_FIELDS",
    "SPLITS",
    "ClipRecord",
    "ManifestAppender",
    "ManifestWarning",
    "MergeStats",
    "find_manifest_errors",
    "format_summary",
    "iter_manifest",
    "merge_manifests",
    "read_manifest",
    "shard_records",
    "summarize",
    "write_manifest",
]

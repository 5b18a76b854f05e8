"""Per-process shards: splitting records among processes and merging their manifests."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from qamdt.errors import ManifestError
from qamdt.manifest.reading import _load_line, _scan, _warn_skipped_tail
from qamdt.manifest.record import ClipRecord, _record_unchecked
from qamdt.manifest.writing import _atomic_write, _folder_of


@dataclass
class MergeStats:
    """What :func:`merge_manifests` did.

    Attributes:
        written: Rows in the output.
        shard_rows: Rows read from the shards.
        replaced: Base rows replaced by a shard row (0 without a base).
        unchanged: Base rows present in no shard (0 without a base).
        conflicts: Shard rows that lost to a later shard row with the same id
            (``on_conflict="last"``).
    """

    written: int = 0
    shard_rows: int = 0
    replaced: int = 0
    unchanged: int = 0
    conflicts: int = 0


def take_fields(
    current: dict[str, Any], shard: dict[str, Any], fields: Iterable[str]
) -> dict[str, Any]:
    """``current`` with the ``fields`` a stage owns taken from its ``shard`` row.

    A field is a row field (``"pmos"``) or one key of a mapping field (``"errors.mos"``,
    ``"meta.pmos_ta"``); a key the shard row lacks is removed from the current row, so a
    stage that succeeded clears its own earlier error.

    Args:
        current: The row as the manifest holds it now.
        shard: The stage's row.
        fields: The fields the stage owns.

    Returns:
        A new row: ``current`` with those fields replaced.
    """
    out = dict(current)
    for name in fields:
        top, _, key = name.partition(".")
        if not key:
            out[top] = shard.get(top)
            continue
        merged = dict(out.get(top) or {})
        source = shard.get(top) or {}
        if key in source:
            merged[key] = source[key]
        else:
            merged.pop(key, None)
        # Stage errors sorted, so the row reads the same whichever stage finished first.
        out[top] = dict(sorted(merged.items())) if top == "errors" else merged
    return out


def merge_manifests(
    out_path: str | os.PathLike,
    shard_paths: Iterable[str | os.PathLike],
    base_path: str | os.PathLike | None = None,
    on_conflict: str = "error",
    *,
    validate: bool = True,
    allow_truncated_tail: bool = False,
    fields: Iterable[str] | None = None,
) -> MergeStats:
    """Merge per-shard manifests written by several processes, atomically.

    Without ``base_path`` the output is the shards concatenated in order. With it, the
    output has the base's rows in the base's order, each replaced by its shard version
    where a shard has one; shards may only hold ids of the base. Audio paths are rebased
    from each input's folder to the output's folder. ``out_path`` may be the base itself.

    With a base, shards whose rows follow the base's order (every stage writes them so)
    are merged in one streaming pass that holds one row per shard in memory; otherwise
    ids and byte offsets are held in memory and shard rows are read again from disk.

    Args:
        out_path: Destination manifest.
        shard_paths: Shard manifests, in order.
        base_path: Optional manifest whose rows and order the output keeps.
        on_conflict: An id in several shard rows: ``"error"`` raises, ``"last"`` keeps
            the last one (without a base it then also takes that row's position).
        validate: Validate every input row.
        allow_truncated_tail: Skip a truncated last line of an input with a warning
            instead of raising.
        fields: With a base, take only these fields from a shard row (see
            :func:`take_fields`) and keep the rest of the base row as it is now, its
            audio path included (absolute paths stay absolute). None takes whole rows.

    Returns:
        Counts of what was merged.

    Raises:
        ManifestError: An invalid input row, a conflicting id, or a shard id missing from
            the base, naming the shard file and line.
        ValueError: An unknown ``on_conflict``.
    """
    if on_conflict not in ("error", "last"):
        raise ValueError(f"on_conflict must be 'error' or 'last', got {on_conflict!r}")
    if fields is not None and base_path is None:
        raise ValueError("fields needs a base manifest to merge into")
    fields = None if fields is None else tuple(fields)
    shards = [os.fspath(p) for p in shard_paths]
    shard_dirs = [_folder_of(p) for p in shards]
    base = None if base_path is None else os.fspath(base_path)
    stats = MergeStats()

    def first_pass(path: str) -> Iterator[tuple[ClipRecord, int, int]]:
        warn = _warn_skipped_tail(path) if allow_truncated_tail else None
        return _scan(path, validate=validate, on_truncated=warn)

    def second_pass(path: str) -> Iterator[tuple[ClipRecord, int, int]]:
        # Already validated, and a skipped tail was already warned about.
        skip = (lambda *_: None) if allow_truncated_tail else None
        return _scan(path, validate=False, on_truncated=skip)

    if base is not None:
        try:
            return _merge_in_order(out_path, shards, base, on_conflict, validate, fields,
                                   allow_truncated_tail)  # fmt: skip
        except _NotInOrder:
            stats = MergeStats()

    base_ids: set[str] | None = None
    if base is not None:
        base_ids = {record.id for record, _, _ in first_pass(base)}

    # id -> (shard index, line, byte offset) of the row that wins.
    index: dict[str, tuple[int, int, int]] = {}
    for si, shard in enumerate(shards):
        for record, line, offset in first_pass(shard):
            stats.shard_rows += 1
            rid = record.id
            if base_ids is not None and rid not in base_ids:
                raise ManifestError(
                    f"id {rid!r} is not in the base manifest {base}",
                    path=shard,
                    line=line,
                    field="id",
                )
            prev = index.get(rid)
            if prev is not None:
                if on_conflict == "error":
                    raise ManifestError(
                        f"id {rid!r} is also in {shards[prev[0]]}, line {prev[1]} "
                        "(pass on_conflict='last' to keep the later row)",
                        path=shard,
                        line=line,
                        field="id",
                    )
                stats.conflicts += 1
            index[rid] = (si, line, offset)

    def concatenated() -> Iterator[tuple[ClipRecord, str]]:
        for si, shard in enumerate(shards):
            for record, line, _ in second_pass(shard):
                if index[record.id][:2] == (si, line):
                    yield record, shard_dirs[si]

    def rebuilt() -> Iterator[tuple[ClipRecord, str]]:
        base_dir = _folder_of(base)
        with ExitStack() as stack:
            handles = [stack.enter_context(open(p, "rb")) for p in shards]
            for record, _, _ in second_pass(base):
                hit = index.get(record.id)
                if hit is None:
                    stats.unchanged += 1
                    yield record, base_dir
                    continue
                si, line, offset = hit
                handles[si].seek(offset)
                obj = _load_line(handles[si].readline(), shards[si], line)
                stats.replaced += 1
                if fields is not None:
                    obj = take_fields(record.to_dict(), obj, fields)
                    yield _record_unchecked(obj, shards[si], line), base_dir
                    continue
                yield _record_unchecked(obj, shards[si], line), shard_dirs[si]

    items = concatenated() if base is None else rebuilt()
    stats.written = _atomic_write(
        out_path,
        items,
        validate=False,
        check_duplicates=False,
        keep_absolute=fields is not None,
    )
    return stats


class _NotInOrder(Exception):
    """A shard's rows do not follow the base's order: merge through an index instead."""


def _merge_in_order(
    out_path: str | os.PathLike,
    shards: list[str],
    base: str,
    on_conflict: str,
    validate: bool,
    fields: tuple[str, ...] | None,
    allow_truncated_tail: bool,
) -> MergeStats:
    """The streaming merge of :func:`merge_manifests` (raises ``_NotInOrder``)."""
    stats = MergeStats()
    base_dir = _folder_of(base)

    def scan(path: str) -> Iterator[tuple[ClipRecord, int, int]]:
        warn = _warn_skipped_tail(path) if allow_truncated_tail else None
        return _scan(path, validate=validate, on_truncated=warn)

    readers = [scan(path) for path in shards]
    heads: dict[str, list[tuple[int, ClipRecord, int]]] = {}

    def advance(si: int) -> None:
        item = next(readers[si], None)
        if item is not None:
            stats.shard_rows += 1
            heads.setdefault(item[0].id, []).append((si, item[0], item[1]))

    def rows() -> Iterator[tuple[ClipRecord, str]]:
        for si in range(len(shards)):
            advance(si)
        for record, _, _ in scan(base):
            hits = heads.pop(record.id, None)
            if not hits:
                stats.unchanged += 1
                yield record, base_dir
                continue
            if len(hits) > 1 and on_conflict == "error":
                (sa, _, la), (sb, _, lb) = hits[0], hits[1]
                raise ManifestError(
                    f"id {record.id!r} is also in {shards[sa]}, line {la} "
                    "(pass on_conflict='last' to keep the later row)",
                    path=shards[sb],
                    line=lb,
                    field="id",
                )
            stats.conflicts += len(hits) - 1
            si, row, line = max(hits, key=lambda hit: hit[0])
            stats.replaced += 1
            for hit in hits:
                advance(hit[0])
            if fields is not None:
                merged = take_fields(record.to_dict(), row.to_dict(), fields)
                yield _record_unchecked(merged, shards[si], line), base_dir
            else:
                yield row, _folder_of(shards[si])
        if heads:
            raise _NotInOrder

    try:
        stats.written = _atomic_write(
            out_path, rows(), validate=False, check_duplicates=False,
            keep_absolute=fields is not None,
        )  # fmt: skip
    finally:
        for reader in readers:
            reader.close()
    return stats


def shard_records(
    records: Iterable[ClipRecord], num_shards: int, shard_index: int
) -> list[ClipRecord]:
    """Take one process's share of the records, round-robin by position.

    Record ``i`` goes to shard ``i % num_shards``: deterministic, and the shards differ in
    size by at most one.

    Args:
        records: All records, in manifest order (any iterable).
        num_shards: Number of processes (e.g. ``accelerator.num_processes``).
        shard_index: This process's index (e.g. ``accelerator.process_index``).

    Returns:
        The records of shard ``shard_index``, in order.

    Raises:
        ValueError: ``num_shards < 1`` or ``shard_index`` out of range.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    if (
        isinstance(shard_index, bool)
        or not isinstance(shard_index, int)
        or not 0 <= shard_index < num_shards
    ):
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index!r}")
    return list(itertools.islice(records, shard_index, None, num_shards))

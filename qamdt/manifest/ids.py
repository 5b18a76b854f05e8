"""Finding duplicate row ids in bounded memory, however long the manifest.

Each id is hashed to 64 bits and kept with its line number in a fixed-size buffer. A full
buffer is spilled to temporary files, one per range of the hash's top byte (256 ranges),
so at the end each range is read alone, sorted, and equal neighbours are candidates. A
candidate is confirmed by reading the two lines' ids again, so a hash collision never
reports a false duplicate. Memory stays at one buffer (16 bytes per entry, 4 MiB) plus one
range (1/256 of the entries: 1 MiB for a million rows).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

import numpy as np

BUFFER_ROWS = 1 << 18
"""Entries held in memory before a sorted run is written (4 MiB)."""

RANGES = 256
"""Hash ranges spilled to separate files."""

_DTYPE = np.dtype([("hash", "<u8"), ("line", "<i8")])


def id_hash(rid: str) -> int:
    """The 64-bit hash of a row id."""
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8"), digest_size=8).digest(), "little")


class DuplicateFinder:
    """Collects ``(id, line)`` pairs and finds the ids used on more than one line.

    Args:
        buffer_rows: Entries kept in memory before spilling to disk (default
            :data:`BUFFER_ROWS`).
    """

    def __init__(self, buffer_rows: int | None = None):
        self.buffer_rows = buffer_rows or BUFFER_ROWS
        self._buffer = np.empty(self.buffer_rows, dtype=_DTYPE)
        self._filled = 0
        self._spilled = False
        self._folder: str | None = None
        self.count = 0

    def add(self, rid: str, line: int) -> None:
        """Records that ``rid`` is on ``line``."""
        self._buffer[self._filled] = (id_hash(rid), line)
        self._filled += 1
        self.count += 1
        if self._filled == self.buffer_rows:
            self._spill()

    def _spill(self) -> None:
        entries = self._buffer[: self._filled]
        ranges = (entries["hash"] >> np.uint64(56)).astype(np.intp)
        order = np.argsort(ranges, kind="stable")
        ends = np.cumsum(np.bincount(ranges, minlength=RANGES))
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="qamdt-ids-")
        start = 0
        for index, end in enumerate(ends):
            if end > start:
                with open(os.path.join(self._folder, f"{index}.bin"), "ab") as handle:
                    entries[order[start:end]].tofile(handle)
            start = end
        self._spilled = True
        self._filled = 0

    def candidate_lines(self) -> list[tuple[int, int]]:
        """``(earlier line, later line)`` pairs whose ids hash alike, by the later line."""
        pairs: list[tuple[int, int]] = []
        if not self._spilled:
            pairs.extend(_pairs(np.sort(self._buffer[: self._filled], order=("hash", "line"))))
            return sorted(pairs, key=lambda p: p[1])
        if self._filled:
            self._spill()
        for index in range(RANGES):
            path = os.path.join(self._folder, f"{index}.bin")
            if os.path.exists(path):
                chunk = np.sort(np.fromfile(path, dtype=_DTYPE), order=("hash", "line"))
                pairs.extend(_pairs(chunk))
        return sorted(pairs, key=lambda p: p[1])

    def close(self) -> None:
        """Removes the temporary runs."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
            self._spilled = False

    def __enter__(self) -> DuplicateFinder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pairs(sorted_entries: np.ndarray) -> list[tuple[int, int]]:
    hashes = sorted_entries["hash"]
    lines = sorted_entries["line"]
    if len(hashes) < 2:
        return []
    pairs = []
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    ends = np.r_[starts[1:], len(hashes)]
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        group = [int(x) for x in lines[start:end]]
        # A true 64-bit collision is rare: pairing within small groups keeps the check exact.
        earlier = group if len(group) <= 8 else group[:1]
        pairs.extend((a, b) for i, b in enumerate(group) for a in earlier[: min(i, len(earlier))])
    return pairs


def confirmed_duplicates(
    pairs: Iterable[tuple[int, int]], id_at: Callable[[set[int]], dict[int, str]]
) -> list[tuple[str, int, int]]:
    """``(id, first line, duplicate line)`` for the candidate pairs whose ids are equal.

    Args:
        pairs: Candidate line pairs (:meth:`DuplicateFinder.candidate_lines`).
        id_at: Reads the ids on a set of lines (one pass over the file).
    """
    pairs = list(pairs)
    if not pairs:
        return []
    ids = id_at({line for pair in pairs for line in pair})
    return [(ids[a], a, b) for a, b in pairs if ids.get(a) is not None and ids[a] == ids.get(b)]

"""Resumable, crash-tolerant appends to a manifest: :class:`ManifestAppender`."""

from __future__ import annotations

import os
import warnings

from qamdt.errors import ManifestError
from qamdt.json_files import fsync_path
from qamdt.manifest.reading import ManifestWarning, _scan
from qamdt.manifest.record import ClipRecord
from qamdt.manifest.writing import _encode, _folder_of


class ManifestAppender:
    """Resumable, crash-tolerant appends to a manifest.

    On opening, the ids already in the file are read into :attr:`done_ids`, so a restarted
    job can skip finished clips. A truncated last line left by a killed process is cut off
    (with a :class:`ManifestWarning`). Each :meth:`append` writes one whole line and
    flushes it; the file is fsync-ed every ``fsync_every`` lines and on close. A file is
    meant to have one appender at a time: give each process its own shard file.

    Example:
        >>> with ManifestAppender("shard-0.jsonl") as out:  # doctest: +SKIP
        ...     for rec in todo:
        ...         if rec.id not in out:
        ...             out.append(label(rec))

    Args:
        path: The manifest to append to; created if missing.
        source_dir: Folder the appended records' relative audio paths are relative to.
            Defaults to the manifest's folder.
        fsync_every: fsync after this many appended lines (None or 0: only on close).
        validate: Validate existing rows on opening and every appended record.
        track_ids: Add appended ids to :attr:`done_ids` and refuse repeats. A caller
            that appends each id once (a stage streaming a manifest) turns it off, so
            memory does not grow with the rows appended.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        source_dir: str | os.PathLike | None = None,
        *,
        fsync_every: int | None = 100,
        validate: bool = True,
        track_ids: bool = True,
    ):
        self.path = os.fspath(path)
        self._dir = _folder_of(self.path)
        self._source_dir = self._dir if source_dir is None else os.path.abspath(source_dir)
        self.fsync_every = fsync_every
        self.validate = validate
        self.track_ids = track_ids
        self.done_ids: set[str] = set()
        self._file = None
        self._unsynced = 0

    def open(self) -> ManifestAppender:
        """Read the existing ids, repair a truncated tail and open the file for appending.

        Returns:
            self.

        Raises:
            ManifestError: The existing file is invalid elsewhere than its last line (it
                is then left unchanged).
        """
        if self._file is not None:
            raise RuntimeError(f"{self.path} is already open")
        truncated: list[tuple[int, int, ManifestError]] = []
        done: set[str] = set()
        existed = os.path.exists(self.path)
        if existed:
            for record, _, _ in _scan(
                self.path,
                validate=self.validate,
                on_truncated=lambda *args: truncated.append(args),
            ):
                done.add(record.id)
        f = open(self.path, "ab")
        try:
            if truncated:
                line, offset, cause = truncated[0]
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
                warnings.warn(
                    f"{self.path}: removed truncated last line {line} ({cause.reason}), "
                    "left by an interrupted write",
                    ManifestWarning,
                    stacklevel=2,
                )
            elif existed and f.tell() > 0:
                # A complete row whose newline was never written: end it before appending.
                with open(self.path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write(b"\n")
                        f.flush()
        except BaseException:
            f.close()
            raise
        if not existed:
            fsync_path(self._dir)
        self.done_ids = done
        self._file = f
        self._unsynced = 0
        return self

    def append(self, record: ClipRecord) -> None:
        """Write one record as a line and flush it.

        Args:
            record: The record; its audio path is rebased from ``source_dir``.

        Raises:
            ManifestError: The id is already in the file, or the record is invalid.
        """
        if self._file is None:
            raise RuntimeError(f"{self.path} is not open; use ManifestAppender in a with block")
        data = _encode(record, self._source_dir, self._dir, self.path, None, self.validate)
        if record.id in self.done_ids:
            raise ManifestError(
                f"id {record.id!r} is already in the manifest", path=self.path, field="id"
            )
        self._file.write(data)
        self._file.flush()
        if self.track_ids:
            self.done_ids.add(record.id)
        self._unsynced += 1
        if self.fsync_every and self._unsynced >= self.fsync_every:
            os.fsync(self._file.fileno())
            self._unsynced = 0

    def close(self) -> None:
        """Flush, fsync and close the file (safe to call twice)."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()

    def __contains__(self, item: object) -> bool:
        """Whether an id (or a record's id) is already in the manifest."""
        if isinstance(item, ClipRecord):
            item = item.id
        return item in self.done_ids

    def __len__(self) -> int:
        return len(self.done_ids)

    def __enter__(self) -> ManifestAppender:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

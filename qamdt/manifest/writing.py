"""Writing manifests atomically, with audio paths rebased to the manifest's folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from qamdt.errors import ManifestError
from qamdt.json_files import atomic_path
from qamdt.manifest.ids import DuplicateFinder, confirmed_duplicates
from qamdt.manifest.record import ClipRecord, _check_row, _show


def _folder_of(path: str | os.PathLike) -> str:
    return os.path.dirname(os.path.abspath(path))


def _rebase(audio: str, src_dir: str, dest_dir: str, keep_absolute: bool = False) -> str:
    """Express ``audio`` (relative to ``src_dir``, or absolute) relative to ``dest_dir``.

    Both folders must be absolute. The path stays absolute when ``keep_absolute`` is set
    (a stage updating a manifest in place must not change what a row points at when the
    file is copied elsewhere) or when no relative path exists (another drive on Windows).
    """
    if keep_absolute and os.path.isabs(audio):
        rel = audio
    elif src_dir == dest_dir and not os.path.isabs(audio):
        rel = audio
    else:
        target = audio if os.path.isabs(audio) else os.path.join(src_dir, audio)
        try:
            rel = os.path.relpath(target, dest_dir)
        except ValueError:
            rel = os.path.normpath(target)
    return rel.replace(os.sep, "/")


def _serialisation_error(
    d: dict[str, Any], exc: Exception, path: str, line: int | None
) -> ManifestError:
    bad_field = None
    for name, value in d.items():
        try:
            json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):
            bad_field = name
            break
    return ManifestError(
        f"record {d.get('id')!r} cannot be written as JSON: {exc}",
        path=path,
        line=line,
        field=bad_field,
    )


def _encode(
    record: ClipRecord,
    src_dir: str,
    dest_dir: str,
    path: str,
    line: int | None,
    validate: bool,
    keep_absolute: bool = False,
) -> bytes:
    """Serialise one record as a UTF-8 JSON line, with its audio path rebased."""
    if not isinstance(record, ClipRecord):
        raise TypeError(f"expected a ClipRecord, got {type(record).__name__}")
    d = record.to_dict()
    if validate:
        values, problems = _check_row(d, path, line)
        if problems:
            p = problems[0]
            raise ManifestError(f"record {record.id!r}: {p.reason}", path, line, p.field)
        d = values
    elif not isinstance(d["audio"], str):
        raise ManifestError(f"must be a string, got {_show(d['audio'])}", path, line, "audio")
    d["audio"] = _rebase(d["audio"], src_dir, dest_dir, keep_absolute)
    try:
        return (json.dumps(d, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise _serialisation_error(d, exc, path, line) from exc


def _atomic_write(
    path: str | os.PathLike,
    items: Iterable[tuple[ClipRecord, str]],
    *,
    validate: bool,
    check_duplicates: bool,
    keep_absolute: bool = False,
) -> int:
    """Write ``(record, folder its audio path is relative to)`` pairs atomically."""
    path = os.fspath(path)
    dest_dir = _folder_of(path)
    with (
        atomic_path(path, durable=True) as temporary,
        open(temporary, "wb") as f,
        DuplicateFinder() as finder,
    ):
        n = 0
        for n, (record, src_dir) in enumerate(items, start=1):
            data = _encode(record, src_dir, dest_dir, path, n, validate, keep_absolute)
            if check_duplicates:
                finder.add(record.id, n)
            f.write(data)
        if check_duplicates:
            # Checked after the last row, in bounded memory; the old file stays until then.
            f.flush()
            pairs = confirmed_duplicates(
                finder.candidate_lines(), lambda lines: _ids_in(temporary, lines)
            )
            if pairs:
                rid, _, line = pairs[0]
                raise ManifestError(
                    f"duplicate id {rid!r} in the records to write", path=path, line=line,
                    field="id",
                )  # fmt: skip
    return n


def _ids_in(path: str | os.PathLike, lines: set[int]) -> dict[int, str]:
    """The ids on some lines of a file this module is writing."""
    found = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n in lines:
                found[n] = json.loads(raw)["id"]
    return found


def write_manifest(
    path: str | os.PathLike,
    records: Iterable[ClipRecord],
    source_dir: str | os.PathLike | None = None,
    *,
    validate: bool = True,
    keep_absolute: bool = False,
) -> int:
    """Write records to a manifest atomically.

    The rows go to a temp file in the destination folder, which is flushed, fsync-ed and
    renamed over ``path``: the old file stays intact if anything fails on the way. Records
    may therefore stream from the very file being rewritten.

    Audio paths are written relative to the destination folder: relative paths are taken
    as relative to ``source_dir`` and rebased, absolute paths are made relative.

    Args:
        path: Destination manifest.
        records: The records, in output order (any iterable; consumed once).
        source_dir: Folder the records' relative audio paths are relative to, i.e. the
            folder of the manifest they were read from. Defaults to the destination folder.
        validate: Check every record before writing it.
        keep_absolute: Write absolute audio paths as they are (stages that update a
            manifest in place).

    Returns:
        The number of rows written.

    Raises:
        ManifestError: An invalid record, a duplicate id, or a value that is not
            JSON-serialisable (the old file is left untouched).
    """
    src = _folder_of(path) if source_dir is None else os.path.abspath(source_dir)
    return _atomic_write(
        path,
        ((r, src) for r in records),
        validate=validate,
        check_duplicates=True,
        keep_absolute=keep_absolute,
    )

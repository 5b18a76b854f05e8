"""Reading manifests: streaming records, and collecting every problem of a file."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from qamdt.errors import ManifestError
from qamdt.manifest.ids import DuplicateFinder, confirmed_duplicates
from qamdt.manifest.record import ClipRecord, _check_row, _record_unchecked

_UTF8_BOM = b"\xef\xbb\xbf"

# Called as ``on_truncated(line, byte offset, cause)`` for an unparsable unterminated last line.
_OnTruncated = Callable[[int, int, ManifestError], None]


class ManifestWarning(UserWarning):
    """A manifest problem that was worked around, such as a truncated last line."""


def _nonblank_lines(path: str) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line number, byte offset, raw bytes)`` for each non-blank line of a file.

    Raises:
        ManifestError: If the file is missing, a folder or unreadable (naming it).
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with block below
    except FileNotFoundError:
        raise ManifestError("manifest not found", path=path) from None
    except IsADirectoryError:
        raise ManifestError("is a folder, not a manifest file", path=path) from None
    except OSError as exc:
        raise ManifestError(f"cannot be read ({exc.strerror})", path=path) from None
    with f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if raw.strip():
                yield lineno, start, raw


def _load_line(raw: bytes, path: str, line: int) -> Any:
    """Decode and parse one line; raises ManifestError on invalid UTF-8 or JSON."""
    if line == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not valid UTF-8 ({exc.reason})", path=path, line=line) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=line
        ) from None


def _truncated_error(path: str, line: int, cause: ManifestError) -> ManifestError:
    return ManifestError(
        f"truncated last line (no trailing newline and {cause.reason}), most likely an "
        "interrupted write; pass allow_truncated_tail=True to skip it, or open the file "
        "with ManifestAppender to repair it",
        path=path,
        line=line,
    )


def _ids_on_lines(path: str, wanted: set[int]) -> dict[int, str]:
    """The ids on the given line numbers (one pass over the file)."""
    found: dict[int, str] = {}
    last = max(wanted, default=0)
    for lineno, _, raw in _nonblank_lines(path):
        if lineno > last:
            break
        if lineno in wanted:
            try:
                obj = _load_line(raw, path, lineno)
            except ManifestError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                found[lineno] = obj["id"]
    return found


def _duplicates(path: str, finder: DuplicateFinder) -> list[ManifestError]:
    """One error per line that repeats an earlier line's id, in line order."""
    confirmed = confirmed_duplicates(
        finder.candidate_lines(), lambda lines: _ids_on_lines(path, lines)
    )
    first: dict[int, tuple[str, int]] = {}
    for rid, a, b in confirmed:
        if b not in first or a < first[b][1]:
            first[b] = (rid, a)
    return [
        ManifestError(
            f"duplicate id {rid!r}, already used on line {a}", path=path, line=b, field="id"
        )
        for b, (rid, a) in sorted(first.items())
    ]


def _warn_skipped_tail(path: str) -> _OnTruncated:
    """Return an ``on_truncated`` callback for :func:`_scan` that warns about the skip."""

    def warn(line: int, offset: int, cause: ManifestError) -> None:
        warnings.warn(
            f"{path}: skipped truncated last line {line} ({cause.reason}), most likely an "
            "interrupted write",
            ManifestWarning,
            # Past this callback, _scan and whatever iterates _scan: to that one's caller.
            stacklevel=4,
        )

    return warn


def _scan(
    path: str | os.PathLike, *, validate: bool, on_truncated: _OnTruncated | None
) -> Iterator[tuple[ClipRecord, int, int]]:
    """Stream ``(record, line number, byte offset of the line)`` from a manifest.

    ``on_truncated`` is called for an unparsable last line without a trailing newline,
    which then ends the scan; when it is None such a line raises.

    With ``validate``, a duplicate id is raised after the last row (ids are checked in
    bounded memory, :mod:`qamdt.manifest.ids`): a caller that must not act on a manifest
    with duplicates reads it through once first.
    """
    path = os.fspath(path)
    with DuplicateFinder() as finder:
        for lineno, start, raw in _nonblank_lines(path):
            try:
                obj = _load_line(raw, path, lineno)
            except ManifestError as exc:
                if raw.endswith(b"\n"):
                    raise
                if on_truncated is None:
                    raise _truncated_error(path, lineno, exc) from None
                on_truncated(lineno, start, exc)
                break
            if validate:
                record = ClipRecord.from_dict(obj, path, lineno)
                finder.add(record.id, lineno)
            else:
                record = _record_unchecked(obj, path, lineno)
            yield record, lineno, start
        if validate:
            duplicates = _duplicates(path, finder)
            if duplicates:
                raise duplicates[0]


def iter_manifest(
    path: str | os.PathLike, validate: bool = True, *, allow_truncated_tail: bool = False
) -> Iterator[ClipRecord]:
    """Stream the records of a manifest, one line at a time.

    Blank lines are skipped. A last line with no trailing newline that does not parse is
    taken as a write interrupted by a killed process.

    Args:
        path: The JSONL manifest.
        validate: Check every field and that ids are unique. With False only the JSON
            syntax and the field names are checked (for files this module just wrote).
        allow_truncated_tail: Skip a truncated last line with a :class:`ManifestWarning`
            instead of raising.

    Yields:
        One :class:`ClipRecord` per non-blank line, in file order.

    Raises:
        ManifestError: Invalid UTF-8 or JSON, a line that is not an object, an invalid
            field, or a duplicate id (naming both lines).
    """
    path = os.fspath(path)
    on_truncated = _warn_skipped_tail(path) if allow_truncated_tail else None
    for record, _, _ in _scan(path, validate=validate, on_truncated=on_truncated):
        yield record


def read_manifest(path: str | os.PathLike, **kwargs: Any) -> list[ClipRecord]:
    """Read a whole manifest into a list; keyword arguments go to :func:`iter_manifest`."""
    return list(iter_manifest(path, **kwargs))


def find_manifest_errors(path: str | os.PathLike, limit: int | None = 50) -> list[ManifestError]:
    """Validate a whole manifest and collect its problems instead of stopping at the first.

    Args:
        path: The JSONL manifest.
        limit: Stop after this many problems (None: no limit).

    Returns:
        The problems found, in file order (empty when the manifest is valid).
    """
    path = os.fspath(path)
    found: list[ManifestError] = []
    with DuplicateFinder() as finder:
        for lineno, _, raw in _nonblank_lines(path):
            if limit is not None and len(found) >= limit:
                break
            try:
                obj = _load_line(raw, path, lineno)
            except ManifestError as exc:
                found.append(exc if raw.endswith(b"\n") else _truncated_error(path, lineno, exc))
                continue
            found.extend(_check_row(obj, path, lineno)[1])
            rid = obj.get("id") if isinstance(obj, dict) else None
            if isinstance(rid, str) and rid.strip():
                finder.add(rid, lineno)
        found.extend(_duplicates(path, finder))
    found.sort(key=lambda error: error.line or 0)
    return found if limit is None else found[:limit]

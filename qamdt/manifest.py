"""The clip manifest: every label a clip gets, one JSON object per line.

A manifest is a JSONL file with one row per clip (:class:`ClipRecord`). Each stage of the
pipeline (p-MOS labelling, caption refinement, training) reads it and writes it back,
possibly from several processes that each write a shard, merged afterwards with
:func:`merge_manifests`.

Audio paths are stored relative to the folder that holds the manifest, with POSIX
separators, so a dataset folder can be moved or copied as a whole. Readers stream
(:func:`iter_manifest`), writers replace files atomically (:func:`write_manifest`), and
:class:`ManifestAppender` supports resumable, crash-tolerant appends.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qamdt.errors import ManifestError

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

SPLITS = ("train", "valid", "test")
CAPTION_SOURCES = (None, "original", "generated", "merged", "none")
QUALITY_PREFIXES = (None, "low quality", "medium quality", "high quality")
QUALITY_LEVELS = (1, 2, 3, 4, 5)
REQUIRED_FIELDS = ("id", "audio")

_UTF8_BOM = b"\xef\xbb\xbf"


class ManifestWarning(UserWarning):
    """A manifest problem that was worked around, such as a truncated last line."""


@dataclass(slots=True)
class ClipRecord:
    """One clip and all of its labels: one row of a manifest.

    Direct construction does not validate; :meth:`from_dict` does, and so do the writers
    (or call :meth:`validate`).

    Attributes:
        id: Unique, non-empty clip identifier.
        audio: Audio file path, relative to the manifest's folder (POSIX separators) or
            absolute.
        offset: Start of the clip in the file, in seconds (>= 0).
        duration: Clip length in seconds (> 0), or None when unknown.
        sample_rate: Sampling rate of the file in Hz (> 0), or None when unknown.
        split: One of :data:`SPLITS`.
        original_caption: Caption that came with the dataset.
        generated_caption: Caption written by a captioning model.
        final_caption: Caption used for training.
        caption_source: Where ``final_caption`` came from, one of :data:`CAPTION_SOURCES`.
        clap: Named CLAP similarity scores (e.g. ``"original_audio"``), finite floats.
        pmos: Pseudo mean opinion score, finite.
        quality_level: Quality bucket 1-5 derived from ``pmos``.
        quality_prefix: Text prefix for the quality level, one of :data:`QUALITY_PREFIXES`.
        errors: Stage name -> reason that stage failed on this clip.
        meta: Free-form JSON-serialisable metadata.
    """

    id: str
    audio: str
    offset: float = 0.0
    duration: float | None = None
    sample_rate: int | None = None
    split: str = "train"
    original_caption: str | None = None
    generated_caption: str | None = None
    final_caption: str | None = None
    caption_source: str | None = None
    clap: dict[str, float] = field(default_factory=dict)
    pmos: float | None = None
    quality_level: int | None = None
    quality_prefix: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        path: str | os.PathLike | None = None,
        line: int | None = None,
    ) -> ClipRecord:
        """Build a validated record from a manifest row.

        Args:
            d: The row, as parsed from JSON.
            path: Manifest file the row came from, for error messages.
            line: 1-based line number of the row, for error messages.

        Returns:
            The record, with numbers normalised (ints given for float fields become floats).

        Raises:
            ManifestError: The first problem found, naming the path, line and field.
        """
        values, problems = _check_row(d, path, line)
        if problems:
            raise problems[0]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return every field, None included, in field order (dicts are shallow copies)."""
        return {
            "id": self.id,
            "audio": self.audio,
            "offset": self.offset,
            "duration": self.duration,
            "sample_rate": self.sample_rate,
            "split": self.split,
            "original_caption": self.original_caption,
            "generated_caption": self.generated_caption,
            "final_caption": self.final_caption,
            "caption_source": self.caption_source,
            "clap": dict(self.clap) if isinstance(self.clap, dict) else self.clap,
            "pmos": self.pmos,
            "quality_level": self.quality_level,
            "quality_prefix": self.quality_prefix,
            "errors": dict(self.errors) if isinstance(self.errors, dict) else self.errors,
            "meta": dict(self.meta) if isinstance(self.meta, dict) else self.meta,
        }

    def validate(self, path: str | os.PathLike | None = None, line: int | None = None) -> None:
        """Check the field types and values, as :meth:`from_dict` does.

        Args:
            path: Manifest file to name in the error, if any.
            line: Line number to name in the error, if any.

        Raises:
            ManifestError: The first problem found.
        """
        _, problems = _check_row(self.to_dict(), path, line)
        if problems:
            raise problems[0]

    def replace(self, **changes: Any) -> ClipRecord:
        """Return a copy with the given fields changed (see ``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def audio_path(self, manifest_dir: str | os.PathLike) -> Path:
        """Resolve the audio path against the folder that holds the manifest.

        Args:
            manifest_dir: The manifest's folder (not the manifest file).

        Returns:
            ``manifest_dir / audio`` for a relative path, the path itself for an absolute one.
        """
        # Joining onto an absolute path yields that absolute path.
        return Path(manifest_dir) / self.audio


_FIELDS = tuple(f.name for f in dataclasses.fields(ClipRecord))
_FIELD_SET = frozenset(_FIELDS)


# ---------------------------------------------------------------------------------------
# Validation


def _show(v: Any) -> str:
    """Render a value the way it looks in JSON, shortened, for error messages."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    if isinstance(v, int):
        return str(v) if v.bit_length() <= 64 else "a very large integer"
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:37] + "...")
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "an array"
    return f"a {type(v).__name__}"


def _finite_float(v: Any) -> float | None:
    """Return ``v`` as a finite float, or None if it is not a finite non-bool number."""
    t = type(v)
    if t is float:
        return v if math.isfinite(v) else None
    if t is int:
        try:
            return float(v)
        except OverflowError:
            return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    try:
        f = float(v)
    except (OverflowError, TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _integer(v: Any) -> int | None:
    """Return ``v`` as an int, or None if it is not a non-bool integer."""
    if type(v) is int:
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        return None
    return int(v)


def _unknown_field_reason(key: Any) -> str:
    close = difflib.get_close_matches(str(key), _FIELDS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown field{hint}; put free-form data under 'meta'"


def _check_row(
    d: Any, path: str | os.PathLike | None, line: int | None
) -> tuple[dict[str, Any] | None, list[ManifestError]]:
    """Validate one row.

    Returns the normalised field values (None when there are problems) and every problem
    found, so that callers can either raise the first one or collect them all.
    """
    problems: list[ManifestError] = []

    def bad(name: str | None, reason: str) -> None:
        problems.append(ManifestError(reason, path=path, line=line, field=name))

    if not isinstance(d, Mapping):
        bad(None, f"expected a JSON object, got {_show(d)}")
        return None, problems

    for key in d:
        if key not in _FIELD_SET:
            bad(str(key), _unknown_field_reason(key))
    missing = [k for k in REQUIRED_FIELDS if k not in d]
    if len(missing) == 1:
        bad(missing[0], "missing required field")
    elif missing:
        bad(None, "missing required fields " + ", ".join(f"'{k}'" for k in missing))

    for name in REQUIRED_FIELDS:
        if name in d:
            v = d[name]
            if not (isinstance(v, str) and v.strip()):
                bad(name, f"must be a non-empty string, got {_show(v)}")

    v = d.get("offset", 0.0)
    offset = _finite_float(v)
    if offset is None or offset < 0:
        bad("offset", f"must be a finite number >= 0, got {_show(v)}")

    duration = v = d.get("duration")
    if v is not None:
        duration = _finite_float(v)
        if duration is None or duration <= 0:
            bad("duration", f"must be a finite number > 0 or null, got {_show(v)}")

    sample_rate = v = d.get("sample_rate")
    if v is not None:
        sample_rate = _integer(v)
        if sample_rate is None or sample_rate <= 0:
            bad("sample_rate", f"must be a positive integer or null, got {_show(v)}")

    split = d.get("split", "train")
    if not (isinstance(split, str) and split in SPLITS):
        bad("split", f"must be one of {', '.join(SPLITS)}, got {_show(split)}")

    for name in ("original_caption", "generated_caption", "final_caption"):
        v = d.get(name)
        if v is not None and not isinstance(v, str):
            bad(name, f"must be a string or null, got {_show(v)}")

    v = d.get("caption_source")
    if not (v is None or (isinstance(v, str) and v in CAPTION_SOURCES)):
        allowed = ", ".join(s for s in CAPTION_SOURCES if s is not None)
        bad("caption_source", f"must be one of {allowed} or null, got {_show(v)}")

    clap = v = d.get("clap", {})
    if not isinstance(v, Mapping):
        bad("clap", f"must be an object of named scores, got {_show(v)}")
    else:
        clap = {}
        for key, score in v.items():
            f = _finite_float(score)
            if not isinstance(key, str) or f is None:
                bad("clap", f"score {_show(key)} must be a finite number, got {_show(score)}")
            else:
                clap[key] = f

    pmos = v = d.get("pmos")
    if v is not None:
        pmos = _finite_float(v)
        if pmos is None:
            bad("pmos", f"must be a finite number or null, got {_show(v)}")

    quality_level = v = d.get("quality_level")
    if v is not None:
        quality_level = _integer(v)
        if quality_level is None or not 1 <= quality_level <= 5:
            bad("quality_level", f"must be an integer 1-5, got {_show(v)}")

    v = d.get("quality_prefix")
    if not (v is None or (isinstance(v, str) and v in QUALITY_PREFIXES)):
        allowed = ", ".join(repr(s) for s in QUALITY_PREFIXES if s is not None)
        bad("quality_prefix", f"must be one of {allowed} or null, got {_show(v)}")

    errors = v = d.get("errors", {})
    if not isinstance(v, Mapping):
        bad("errors", f"must be an object of stage -> reason, got {_show(v)}")
    else:
        for key, reason in v.items():
            if not isinstance(key, str) or not isinstance(reason, str):
                bad("errors", f"entry {_show(key)} must map to a string, got {_show(reason)}")
        errors = dict(v)

    meta = v = d.get("meta", {})
    if not isinstance(v, Mapping):
        bad("meta", f"must be an object, got {_show(v)}")
    else:
        meta = dict(v)

    if problems:
        return None, problems
    return {
        "id": d["id"],
        "audio": d["audio"],
        "offset": offset,
        "duration": duration,
        "sample_rate": sample_rate,
        "split": split,
        "original_caption": d.get("original_caption"),
        "generated_caption": d.get("generated_caption"),
        "final_caption": d.get("final_caption"),
        "caption_source": d.get("caption_source"),
        "clap": clap,
        "pmos": pmos,
        "quality_level": quality_level,
        "quality_prefix": d.get("quality_prefix"),
        "errors": errors,
        "meta": meta,
    }, problems


def _record_unchecked(d: dict[str, Any], path: str, line: int) -> ClipRecord:
    """Build a record checking only the keys, for trusted input (``validate=False``)."""
    for key in d:
        if key not in _FIELD_SET:
            raise ManifestError(_unknown_field_reason(key), path=path, line=line, field=key)
    for key in REQUIRED_FIELDS:
        if key not in d:
            raise ManifestError("missing required field", path=path, line=line, field=key)
    return ClipRecord(**d)


# ---------------------------------------------------------------------------------------
# Reading


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


def _non_object_error(obj: Any, path: str, line: int) -> ManifestError:
    return ManifestError(f"expected a JSON object, got {_show(obj)}", path=path, line=line)


def _truncated_error(path: str, line: int, cause: ManifestError) -> ManifestError:
    return ManifestError(
        f"truncated last line (no trailing newline and {cause.reason}), most likely an "
        "interrupted write; pass allow_truncated_tail=True to skip it, or open the file "
        "with ManifestAppender to repair it",
        path=path,
        line=line,
    )


def _first_line_with_id(path: str, rid: str, before: int) -> int | None:
    """Find the first line before ``before`` whose row has id ``rid`` (error path only)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno >= before:
                break
            try:
                obj = _load_line(raw, path, lineno)
            except ManifestError:
                continue
            if isinstance(obj, dict) and obj.get("id") == rid:
                return lineno
    return None


def _duplicate_error(path: str, rid: str, line: int) -> ManifestError:
    # Only ids are kept while streaming, so the earlier line is looked up again here.
    first = _first_line_with_id(path, rid, line)
    where = f"line {first}" if first is not None else "an earlier line"
    return ManifestError(
        f"duplicate id {rid!r}, already used on {where}", path=path, line=line, field="id"
    )


def _scan(
    path: str | os.PathLike,
    *,
    validate: bool,
    on_truncated: Callable[[int, int, ManifestError], None] | None,
) -> Iterator[tuple[ClipRecord, int, int]]:
    """Stream ``(record, line number, byte offset of the line)`` from a manifest.

    ``on_truncated(line, offset, cause)`` is called for an unparsable last line without a
    trailing newline; when it is None such a line raises.
    """
    path = os.fspath(path)
    seen: set[str] | None = set() if validate else None
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            start = offset
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                obj = _load_line(raw, path, lineno)
            except ManifestError as exc:
                if raw.endswith(b"\n"):
                    raise
                if on_truncated is None:
                    raise _truncated_error(path, lineno, exc) from None
                on_truncated(lineno, start, exc)
                return
            if not isinstance(obj, dict):
                raise _non_object_error(obj, path, lineno)
            if validate:
                record = ClipRecord.from_dict(obj, path, lineno)
                if record.id in seen:
                    raise _duplicate_error(path, record.id, lineno)
                seen.add(record.id)
            else:
                record = _record_unchecked(obj, path, lineno)
            yield record, lineno, start


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
    path_s = os.fspath(path)

    def warn_truncated(line: int, offset: int, cause: ManifestError) -> None:
        warnings.warn(
            f"{path_s}: skipped truncated last line {line} ({cause.reason}), most likely an "
            "interrupted write",
            ManifestWarning,
            stacklevel=4,
        )

    for record, _, _ in _scan(
        path_s, validate=validate, on_truncated=warn_truncated if allow_truncated_tail else None
    ):
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
    path_s = os.fspath(path)
    found: list[ManifestError] = []
    seen: set[str] = set()
    with open(path_s, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if limit is not None and len(found) >= limit:
                break
            if not raw.strip():
                continue
            try:
                obj = _load_line(raw, path_s, lineno)
            except ManifestError as exc:
                found.append(exc if raw.endswith(b"\n") else _truncated_error(path_s, lineno, exc))
                continue
            if not isinstance(obj, dict):
                found.append(_non_object_error(obj, path_s, lineno))
                continue
            found.extend(_check_row(obj, path_s, lineno)[1])
            rid = obj.get("id")
            if isinstance(rid, str) and rid.strip():
                if rid in seen:
                    found.append(_duplicate_error(path_s, rid, lineno))
                else:
                    seen.add(rid)
    return found if limit is None else found[:limit]


# ---------------------------------------------------------------------------------------
# Writing


def _folder_of(path: str | os.PathLike) -> str:
    return os.path.dirname(os.path.abspath(path))


def _rebase(audio: str, src_dir: str, dest_dir: str) -> str:
    """Express ``audio`` (relative to ``src_dir``, or absolute) relative to ``dest_dir``.

    Both folders must be absolute. The path stays absolute only when no relative path
    exists (another drive on Windows).
    """
    if os.path.isabs(audio):
        target = audio
    elif src_dir == dest_dir:
        return audio if os.sep == "/" else audio.replace(os.sep, "/")
    else:
        target = os.path.join(src_dir, audio)
    try:
        rel = os.path.relpath(target, dest_dir)
    except ValueError:
        rel = os.path.normpath(target)
    return rel if os.sep == "/" else rel.replace(os.sep, "/")


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
    record: ClipRecord, src_dir: str, dest_dir: str, path: str, line: int | None, validate: bool
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
    d["audio"] = _rebase(d["audio"], src_dir, dest_dir)
    try:
        return (json.dumps(d, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise _serialisation_error(d, exc, path, line) from exc


def _fsync_dir(folder: str) -> None:
    """Make a rename or a new file in ``folder`` durable (best effort; no-op on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(dest: str) -> tuple[int, str]:
    """Create a hidden temp file beside ``dest``, with the permissions a new file would get.

    ``tempfile.mkstemp`` would create it with mode 0600, which the renamed manifest would
    then keep.
    """
    folder, name = os.path.split(os.path.abspath(dest))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _atomic_write(
    path: str | os.PathLike,
    items: Iterable[tuple[ClipRecord, str]],
    *,
    validate: bool,
    check_duplicates: bool,
) -> int:
    """Write ``(record, folder its audio path is relative to)`` pairs atomically."""
    path = os.fspath(path)
    dest_dir = _folder_of(path)
    fd, tmp = _create_temp(path)
    try:
        with open(fd, "wb") as f:
            seen: set[str] = set()
            n = 0
            for n, (record, src_dir) in enumerate(items, start=1):
                data = _encode(record, src_dir, dest_dir, path, n, validate)
                if check_duplicates:
                    if record.id in seen:
                        raise ManifestError(
                            f"duplicate id {record.id!r} in the records to write",
                            path=path,
                            line=n,
                            field="id",
                        )
                    seen.add(record.id)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(dest_dir)
    return n


def write_manifest(
    path: str | os.PathLike,
    records: Iterable[ClipRecord],
    source_dir: str | os.PathLike | None = None,
    *,
    validate: bool = True,
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

    Returns:
        The number of rows written.

    Raises:
        ManifestError: An invalid record, a duplicate id, or a value that is not
            JSON-serialisable (the old file is left untouched).
    """
    dest_dir = _folder_of(path)
    src = dest_dir if source_dir is None else os.path.abspath(source_dir)
    return _atomic_write(
        path, ((r, src) for r in records), validate=validate, check_duplicates=True
    )


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
    """

    def __init__(
        self,
        path: str | os.PathLike,
        source_dir: str | os.PathLike | None = None,
        *,
        fsync_every: int | None = 100,
        validate: bool = True,
    ):
        self.path = os.fspath(path)
        self._dir = _folder_of(self.path)
        self._source_dir = self._dir if source_dir is None else os.path.abspath(source_dir)
        self.fsync_every = fsync_every
        self.validate = validate
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
            _fsync_dir(self._dir)
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


# ---------------------------------------------------------------------------------------
# Shards


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


def merge_manifests(
    out_path: str | os.PathLike,
    shard_paths: Iterable[str | os.PathLike],
    base_path: str | os.PathLike | None = None,
    on_conflict: str = "error",
    *,
    validate: bool = True,
    allow_truncated_tail: bool = False,
) -> MergeStats:
    """Merge per-shard manifests written by several processes, atomically.

    Without ``base_path`` the output is the shards concatenated in order. With it, the
    output has the base's rows in the base's order, each replaced by its shard version
    where a shard has one; shards may only hold ids of the base. Audio paths are rebased
    from each input's folder to the output's folder. ``out_path`` may be the base itself.

    Only ids and byte offsets are held in memory: shard rows are read again from disk
    when written.

    Args:
        out_path: Destination manifest.
        shard_paths: Shard manifests, in order.
        base_path: Optional manifest whose rows and order the output keeps.
        on_conflict: An id in several shard rows: ``"error"`` raises, ``"last"`` keeps
            the last one (without a base it then also takes that row's position).
        validate: Validate every input row.
        allow_truncated_tail: Skip a truncated last line of an input with a warning
            instead of raising.

    Returns:
        Counts of what was merged.

    Raises:
        ManifestError: An invalid input row, a conflicting id, or a shard id missing from
            the base, naming the shard file and line.
        ValueError: An unknown ``on_conflict``.
    """
    if on_conflict not in ("error", "last"):
        raise ValueError(f"on_conflict must be 'error' or 'last', got {on_conflict!r}")
    shards = [os.fspath(p) for p in shard_paths]
    shard_dirs = [_folder_of(p) for p in shards]
    base = None if base_path is None else os.fspath(base_path)
    stats = MergeStats()

    def first_pass(path: str) -> Iterator[tuple[ClipRecord, int, int]]:
        return _scan_input(path, validate, allow_truncated_tail, warn=True)

    def second_pass(path: str) -> Iterator[tuple[ClipRecord, int, int]]:
        # Already validated, and a skipped tail was already warned about.
        return _scan_input(path, False, allow_truncated_tail, warn=False)

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
                yield _record_unchecked(obj, shards[si], line), shard_dirs[si]

    items = concatenated() if base is None else rebuilt()
    stats.written = _atomic_write(out_path, items, validate=False, check_duplicates=False)
    return stats


def _scan_input(
    path: str, validate: bool, allow_truncated_tail: bool, *, warn: bool
) -> Iterator[tuple[ClipRecord, int, int]]:
    """:func:`_scan` for merge inputs, skipping a truncated tail when allowed."""
    if not allow_truncated_tail:
        return _scan(path, validate=validate, on_truncated=None)

    def on_truncated(line: int, offset: int, cause: ManifestError) -> None:
        if warn:
            warnings.warn(
                f"{path}: skipped truncated last line {line} ({cause.reason}), most likely "
                "an interrupted write",
                ManifestWarning,
                stacklevel=4,
            )

    return _scan(path, validate=validate, on_truncated=on_truncated)


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


# ---------------------------------------------------------------------------------------
# Summary


def _present(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


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
    splits = dict.fromkeys(SPLITS, 0)
    dur_known = 0
    dur_total = 0.0
    captions = {"original": 0, "original_missing": 0, "generated": 0, "final": 0}
    sources = {s: 0 for s in CAPTION_SOURCES if s is not None}
    sources["unset"] = 0
    clap_sums: dict[str, list[float]] = {}
    pm_n = 0
    pm_mean = 0.0
    pm_m2 = 0.0
    pm_min = math.inf
    pm_max = -math.inf
    levels = {str(q): 0 for q in QUALITY_LEVELS}
    levels["unset"] = 0
    prefixes = {p: 0 for p in QUALITY_PREFIXES if p is not None}
    prefixes["unset"] = 0
    error_rows = 0
    error_stages: dict[str, int] = {}

    for r in records:
        clips += 1
        splits[r.split] = splits.get(r.split, 0) + 1
        if r.duration is not None:
            dur_known += 1
            dur_total += r.duration
        if _present(r.original_caption):
            captions["original"] += 1
        else:
            captions["original_missing"] += 1
        captions["generated"] += _present(r.generated_caption)
        captions["final"] += _present(r.final_caption)
        source = "unset" if r.caption_source is None else r.caption_source
        sources[source] = sources.get(source, 0) + 1
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
        level = "unset" if r.quality_level is None else str(r.quality_level)
        levels[level] = levels.get(level, 0) + 1
        prefix = "unset" if r.quality_prefix is None else r.quality_prefix
        prefixes[prefix] = prefixes.get(prefix, 0) + 1
        if r.errors:
            error_rows += 1
            for stage in r.errors:
                error_stages[stage] = error_stages.get(stage, 0) + 1

    return {
        "clips": clips,
        "splits": splits,
        "duration": {
            "known": dur_known,
            "missing": clips - dur_known,
            "total_seconds": dur_total,
            "total_hours": dur_total / 3600.0,
            "mean_seconds": dur_total / dur_known if dur_known else None,
        },
        "captions": {**captions, "source": sources},
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
        "quality_level": levels,
        "quality_prefix": prefixes,
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

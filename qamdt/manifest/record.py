"""One manifest row: :class:`ClipRecord`, the allowed values of its fields, and validation."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qamdt.errors import ManifestError, did_you_mean
from qamdt.quality import LEVELS, PREFIXES, with_prefix

SPLITS = ("train", "valid", "test")
CAPTION_SOURCES = (None, "original", "generated", "merged", "none")
QUALITY_PREFIXES = (None, *PREFIXES)
QUALITY_LEVELS = LEVELS
REQUIRED_FIELDS = ("id", "audio")


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
        return cls(**_validated(d, path, line))

    def to_dict(self) -> dict[str, Any]:
        """Return every field, None included, in field order (dicts are shallow copies)."""
        d = {name: getattr(self, name) for name in _FIELDS}
        for name in ("clap", "errors", "meta"):
            if isinstance(d[name], dict):
                d[name] = dict(d[name])
        return d

    def validate(self, path: str | os.PathLike | None = None, line: int | None = None) -> None:
        """Check the field types and values, as :meth:`from_dict` does.

        Args:
            path: Manifest file to name in the error, if any.
            line: Line number to name in the error, if any.

        Raises:
            ManifestError: The first problem found.
        """
        _validated(self.to_dict(), path, line)

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

    def training_caption(self, use_prefix: bool = True) -> str:
        """The text a model trains on, with the row's quality prefix when ``use_prefix``.

        The caption is ``final_caption``, else ``original_caption``, else empty.
        """
        caption = self.final_caption or self.original_caption or ""
        return with_prefix(caption, self.quality_prefix if use_prefix else None)


_FIELDS = tuple(f.name for f in dataclasses.fields(ClipRecord))
_FIELD_SET = frozenset(_FIELDS)


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
    # Exact-type fast paths: the ABC checks below are slow, and this runs per field per row.
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
    return f"unknown field{did_you_mean(key, _FIELDS)}; put free-form data under 'meta'"


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
        if quality_level is None or quality_level not in LEVELS:
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


def _validated(d: Any, path: str | os.PathLike | None, line: int | None) -> dict[str, Any]:
    """Return the normalised field values of a row, or raise its first problem."""
    values, problems = _check_row(d, path, line)
    if problems:
        raise problems[0]
    return values


def _record_unchecked(d: Any, path: str, line: int) -> ClipRecord:
    """Build a record checking only the shape and keys, for trusted input."""
    if not isinstance(d, dict):
        raise ManifestError(f"expected a JSON object, got {_show(d)}", path=path, line=line)
    for key in d:
        if key not in _FIELD_SET:
            raise ManifestError(_unknown_field_reason(key), path=path, line=line, field=key)
    for key in REQUIRED_FIELDS:
        if key not in d:
            raise ManifestError("missing required field", path=path, line=line, field=key)
    return ClipRecord(**d)

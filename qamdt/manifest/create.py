"""``qamdt manifest create``: a manifest from folders of songs, without copying audio.

Audio files are found recursively; their duration and format come from their headers
(nothing is decoded). Long files are cut into clip rows that point into the file
(``offset``, ``duration``), so every later stage decodes only its clip. Captions come from
a CSV or JSONL file (by path or id), or from a sidecar ``.txt`` / ``.json`` beside each
audio file. Row ids are derived from the file's path and the clip's place in it, and the
split from a hash of the file (or its folder), so both stay the same when files are added
or the command is run again. A file that cannot be read is listed with the reason and the
rest go on.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qamdt.audio_io import audio_info
from qamdt.errors import AudioError, ConfigError, ManifestError
from qamdt.manifest.record import SPLITS, ClipRecord
from qamdt.manifest.writing import write_manifest

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a")
"""File name endings searched for; a file the installed decoder cannot read is listed."""

SPLIT_UNITS = ("file", "folder")


@dataclasses.dataclass(frozen=True)
class CreateSettings:
    """How ``qamdt manifest create`` cuts, captions and splits.

    Attributes:
        clip_seconds: Clip length; None gives one row per file (the whole file).
        hop_seconds: Start-to-start distance of clips (default: ``clip_seconds``, no
            overlap). A file shorter than one clip gives one row of its whole length.
        split_by: "file" (each file's clips share a split) or "folder" (each folder's).
        split: Shares of train, valid and test, summing to 1.
        workers: Threads reading file headers.
    """

    clip_seconds: float | None = None
    hop_seconds: float | None = None
    split_by: str = "file"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    workers: int = 4

    def __post_init__(self) -> None:
        for name in ("clip_seconds", "hop_seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')}: must be a positive number")
        if self.hop_seconds is not None and self.clip_seconds is None:
            raise ConfigError("--hop-seconds: needs --clip-seconds")
        if self.split_by not in SPLIT_UNITS:
            raise ConfigError(f"--split-by: unknown '{self.split_by}'; known: {list(SPLIT_UNITS)}")
        if len(self.split) != len(SPLITS) or any(not math.isfinite(s) or s < 0 for s in self.split):
            raise ConfigError("--split: give three non-negative shares (train valid test)")
        if abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"--split: shares must sum to 1, got {sum(self.split):g}")
        if self.workers < 1:
            raise ConfigError("--workers: must be >= 1")


def find_audio_files(roots: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Every audio file under ``roots``, as ``(root, file)``, in a stable order.

    Raises:
        ConfigError: If a root is not a folder.
    """
    found = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"{root}: not a folder")
        for folder, _, names in os.walk(root):
            for name in names:
                if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith("."):
                    found.append((root, Path(folder) / name))
    return sorted(found, key=lambda pair: (str(pair[0]), str(pair[1])))


def _caption_value(row: Mapping[str, Any], path: Path, line: int | None) -> str | None:
    if row.get("caption") not in (None, ""):
        return str(row["caption"]).strip()
    tags = row.get("tags")
    if isinstance(tags, list):
        return ", ".join(str(tag).strip() for tag in tags if str(tag).strip()) or None
    if isinstance(tags, str) and tags.strip():
        return ", ".join(t.strip() for t in tags.split(",") if t.strip())
    if "caption" not in row and "tags" not in row:
        raise ManifestError("needs a 'caption' or 'tags' field", path, line)
    return None


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """Captions by key from a CSV (header row) or JSONL file.

    Each row names its clip or file by ``path`` (relative to the audio folder, absolute, or
    the bare file name) or ``id``, and gives ``caption`` or ``tags`` (a list, or a
    comma-separated string).

    Raises:
        ManifestError: Naming the file and line of a malformed row.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--captions: {path} not found")
    captions = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"path", "id"} & set(reader.fieldnames):
                raise ManifestError("the header needs a 'path' or 'id' column", path, 1)
            rows = [(i + 2, row) for i, row in enumerate(reader)]
    else:
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise ManifestError(f"not JSON ({error.msg})", path, i) from None
    for line, row in rows:
        if not isinstance(row, dict):
            raise ManifestError("expected an object", path, line)
        key = row.get("path") or row.get("id")
        if not key:
            raise ManifestError("needs a 'path' or 'id'", path, line)
        caption = _caption_value(row, path, line)
        if caption:
            captions[str(key)] = caption
    return captions


def sidecar_caption(audio: Path) -> str | None:
    """Caption from ``NAME.txt`` or ``NAME.json`` beside ``NAME.<ext>``, if present.

    Raises:
        ManifestError: If the ``.json`` sidecar is malformed.
    """
    text = audio.with_suffix(".txt")
    if text.is_file():
        return text.read_text(encoding="utf-8").strip() or None
    sidecar = audio.with_suffix(".json")
    if sidecar.is_file():
        try:
            values = json.loads(sidecar.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ManifestError(f"not JSON ({error.msg})", sidecar) from None
        if isinstance(values, dict):
            return _caption_value(values, sidecar, None)
    return None


def clip_id(relative: str, index: int | None) -> str:
    """A stable row id from a file's path relative to its root (and the clip's index)."""
    stem = re.sub(r"[^A-Za-z0-9._/-]+", "_", relative.rsplit(".", 1)[0]).strip("_")
    return stem if index is None else f"{stem}#{index:04d}"


def split_of(key: str, shares: Sequence[float]) -> str:
    """The split of a file or folder: a hash of its key, cut at the cumulative shares."""
    point = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    total = 0.0
    for name, share in zip(SPLITS, shares, strict=True):
        total += share
        if point < total:
            return name
    return next(name for name, share in zip(SPLITS[::-1], shares[::-1], strict=True) if share)


def clip_offsets(duration: float, settings: CreateSettings) -> list[tuple[float, float]]:
    """``(offset, duration)`` of each clip row of a file of ``duration`` seconds."""
    clip = settings.clip_seconds
    if clip is None or duration <= clip:
        return [(0.0, duration)]
    hop = settings.hop_seconds or clip
    count = int(math.floor((duration - clip) / hop + 1e-9)) + 1
    return [(round(i * hop, 6), clip) for i in range(count)]


def _rows_of_file(
    root: Path,
    audio: Path,
    info: Mapping[str, Any],
    settings: CreateSettings,
    captions: Mapping[str, str],
    multiple_roots: bool,
) -> list[ClipRecord]:
    relative = audio.relative_to(root).as_posix()
    if multiple_roots:
        relative = f"{root.name}/{relative}"
    unit = relative if settings.split_by == "file" else relative.rsplit("/", 1)[0] or "."
    split = split_of(unit, settings.split)
    clips = clip_offsets(info["duration"], settings)
    file_caption = (
        captions.get(relative)
        or captions.get(str(audio))
        or captions.get(audio.name)
        or sidecar_caption(audio)
    )
    rows = []
    for index, (offset, duration) in enumerate(clips):
        row_id = clip_id(relative, index if settings.clip_seconds is not None else None)
        rows.append(
            ClipRecord(
                id=row_id,
                audio=str(audio.resolve()),
                offset=offset,
                duration=round(duration, 6),
                sample_rate=info["samplerate"],
                split=split,
                original_caption=captions.get(row_id) or file_caption,
                meta={
                    "source": relative,
                    "format": info["format"],
                    "channels": info["channels"],
                    "file_seconds": round(info["duration"], 6),
                },
            )
        )
    return rows


def _header(path: Path) -> dict[str, Any] | str:
    try:
        info = audio_info(path)
    except AudioError as error:
        if path.suffix.lower() == ".m4a":
            return "no decoder for .m4a in this installation (convert it to FLAC or WAV)"
        return error.reason
    if info["duration"] <= 0:
        return "the header gives no samples"
    return info


def create_manifest(
    roots: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    settings: CreateSettings | None = None,
    captions: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Writes a manifest of every readable audio file under ``roots``.

    Args:
        roots: Audio folders, searched recursively.
        out: The manifest to write (atomically); ``OUT.failures.jsonl`` beside it lists
            the files that could not be read, with the reason.
        settings: Cutting and splitting.
        captions: A CSV or JSONL caption file (see :func:`read_captions`).
        progress: Show a progress bar while reading headers.

    Returns:
        A summary: files, rows, failures, rows per split, captioned rows.

    Raises:
        ConfigError: Bad settings or roots; no readable file at all.
        ManifestError: A malformed caption file.
    """
    from tqdm import tqdm

    settings = settings or CreateSettings()
    files = find_audio_files(roots)
    caption_map = read_captions(captions) if captions is not None else {}
    with ThreadPoolExecutor(settings.workers) as pool:
        headers = list(
            tqdm(
                pool.map(_header, (audio for _, audio in files)),
                total=len(files),
                desc="reading headers",
                disable=not progress,
            )
        )
    rows, failures = [], []
    multiple = len({str(root) for root, _ in files}) > 1
    for (root, audio), info in zip(files, headers, strict=True):
        if isinstance(info, str):
            failures.append({"audio": str(audio), "reason": info})
            continue
        try:
            rows.extend(_rows_of_file(root, audio, info, settings, caption_map, multiple))
        except ManifestError as error:
            failures.append({"audio": str(audio), "reason": str(error)})
    if not rows:
        raise ConfigError(
            f"no readable audio under {', '.join(map(str, roots))} "
            f"({len(files)} files found, {len(failures)} unreadable)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, rows)
    _write_failures(out, failures)
    counts = {name: sum(r.split == name for r in rows) for name in SPLITS}
    return {
        "manifest": str(out),
        "files": len(files),
        "rows": len(rows),
        "unreadable": len(failures),
        "splits": counts,
        "captioned": sum(bool(r.original_caption) for r in rows),
    }


def _write_failures(out: Path, failures: Iterable[dict[str, str]]) -> None:
    path = out.with_name(out.name + ".failures.jsonl")
    failures = list(failures)
    if not failures:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(json.dumps(f) + "\n" for f in failures), encoding="utf-8")

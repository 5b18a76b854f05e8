"""Rated clips and the readers of rating files: MusicEval and plain CSV.

Every source of ratings is turned into a list of :class:`RatedClip` (audio file, overall
quality ``mos``, optional text alignment ``ta`` and caption, system id and split):

- the MusicEval / AudioMOS 2025 track-1 layout (:func:`load_musiceval`);
- a plain ``path,mos[,caption]`` CSV (:func:`load_csv_ratings`).

The embedded corpus and the ``"scheme:PATH"`` dispatch are in :mod:`mos_predictor.data`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from qamdt.errors import ConfigError, ManifestError

#: Prefix of the AudioMOS 2025 track-1 file names (``audiomos2025-track1-S002_P044.wav``);
#: it is removed before the system and prompt ids are read from a name.
MUSICEVAL_PREFIX = "audiomos2025-track1-"

#: Prompt files looked for in a MusicEval root, in ``sets/`` and then in the root itself.
MUSICEVAL_PROMPT_FILES = ("prompt_info.txt", "demo_prompt_info.txt")

_MUSICEVAL_SPLITS = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev"}


@dataclass
class RatedClip:
    """One rated audio clip.

    Attributes:
        id: Identifier, unique within its source.
        path: The audio file.
        mos: Overall quality score (MOS units, usually 1-5).
        ta: Text-alignment score, when the source has one.
        caption: The text the clip was generated from or described by, when known.
        system: Id of the system (generator, corpus source) that produced the clip.
        split: Split the clip belongs to (``"train"``, ``"valid"``/``"dev"``, ``"test"``).
        offset: Start of the clip in the file, in seconds.
        duration: Clip length in seconds, or None for the rest of the file.
        meta: Source-specific extra information.
    """

    id: str
    path: Path
    mos: float
    ta: float | None = None
    caption: str | None = None
    system: str | None = None
    split: str = "train"
    offset: float = 0.0
    duration: float | None = None
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _parse_score(text: str) -> float | None:
    """Return ``text`` as a finite float, or None when it is not one."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_text_lines(path: Path) -> list[str]:
    """Read a text file's lines (BOM and line endings removed)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return f.read().splitlines()


def _split_csv_line(line: str, delimiter: str = ",") -> list[str]:
    """Split one line with csv quoting rules, fields stripped."""
    row = next(csv.reader(io.StringIO(line), delimiter=delimiter, skipinitialspace=True), [])
    return [cell.strip() for cell in row]


# --------------------------------------------------------------------------- MusicEval


def _musiceval_name_parts(filename: str) -> tuple[str, str | None]:
    """``(system id, prompt id)`` of a MusicEval file name.

    The challenge prefix and the ``.wav`` suffix are removed; the system id is the first
    ``_``-separated field, the prompt id the second (None when there is none).
    """
    stem = filename[:-4] if filename.lower().endswith(".wav") else filename
    if stem.startswith(MUSICEVAL_PREFIX):
        stem = stem[len(MUSICEVAL_PREFIX) :]
    parts = stem.split("_")
    prompt = parts[1] if len(parts) > 1 and parts[1] else None
    return parts[0], prompt


def _read_prompt_file(path: Path) -> dict[str, str]:
    """Read ``id<TAB>text`` (or ``id,text``) lines; a header line is skipped.

    The separator is a tab when the line has one, else the first comma; text after it is
    kept whole, commas included. Lines without a separator are ignored.
    """
    prompts: dict[str, str] = {}
    first = True
    for line in _read_text_lines(path):
        if not line.strip():
            continue
        is_first, first = first, False
        delimiter = "\t" if "\t" in line else ","
        fields = _split_csv_line(line, delimiter)
        if len(fields) < 2:
            continue
        key = fields[0]
        text = fields[1] if len(fields) == 2 else line.split(delimiter, 1)[1].strip()
        if is_first and key.lower() in ("id", "prompt_id", "prompt", "filename", "name"):
            continue
        if key and text:
            prompts[key] = text
    return prompts


def _musiceval_prompts(root: Path) -> dict[str, str]:
    prompts: dict[str, str] = {}
    for name in MUSICEVAL_PROMPT_FILES:
        for folder in (root / "sets", root):
            candidate = folder / name
            if candidate.is_file():
                prompts.update(_read_prompt_file(candidate))
                break
    return prompts


def _musiceval_caption(prompts: dict[str, str], filename: str, prompt_id: str | None) -> str | None:
    # Demo prompt files key whole file names; the main one keys prompt ids.
    stem = filename[:-4] if filename.lower().endswith(".wav") else filename
    for key in (filename, stem + ".wav", stem, prompt_id):
        if key is not None and key in prompts:
            return prompts[key]
    return None


def _musiceval_list(root: Path, split: str, prompts: dict[str, str]) -> list[RatedClip]:
    list_file = root / "sets" / f"{split}_mos_list.txt"
    if not list_file.is_file():
        raise ManifestError(f"MusicEval {split} list file not found", path=list_file)
    wav_dir = root / "wav"
    clips: list[RatedClip] = []
    seen: dict[str, int] = {}
    first = True
    for lineno, line in enumerate(_read_text_lines(list_file), start=1):
        if not line.strip():
            continue
        is_first, first = first, False
        fields = _split_csv_line(line)
        if len(fields) != 3:
            raise ManifestError(
                f"expected 'filename,overall,textual', got {len(fields)} field(s): {line!r}",
                path=list_file,
                line=lineno,
            )
        filename, overall_text, textual_text = fields
        overall, textual = _parse_score(overall_text), _parse_score(textual_text)
        if is_first and overall is None and textual is None:
            continue  # header
        for name, text, value in (
            ("overall", overall_text, overall),
            ("textual", textual_text, textual),
        ):
            if value is None:
                raise ManifestError(
                    f"score is not a finite number: {text!r}",
                    path=list_file,
                    line=lineno,
                    field=name,
                )
        if not filename:
            raise ManifestError("empty file name", path=list_file, line=lineno, field="filename")
        wav_name = filename if filename.lower().endswith(".wav") else filename + ".wav"
        wav = wav_dir / wav_name
        if not wav.is_file():
            raise ManifestError(
                f"audio file {wav} not found", path=list_file, line=lineno, field="filename"
            )
        clip_id = wav_name[:-4]
        if clip_id in seen:
            raise ManifestError(
                f"duplicate entry {clip_id!r}, already on line {seen[clip_id]}",
                path=list_file,
                line=lineno,
                field="filename",
            )
        seen[clip_id] = lineno
        system, prompt_id = _musiceval_name_parts(wav_name)
        clips.append(
            RatedClip(
                id=clip_id,
                path=wav,
                mos=overall,
                ta=textual,
                caption=_musiceval_caption(prompts, wav_name, prompt_id),
                system=system,
                split=split,
                meta={"prompt_id": prompt_id, "list_file": str(list_file), "line": lineno},
            )
        )
    return clips


def load_musiceval(root: str | os.PathLike, split: str) -> list[RatedClip]:
    """Read a split of MusicEval (the AudioMOS 2025 track-1 data).

    Layout: ``root/wav/<filename>.wav`` and ``root/sets/{train,dev}_mos_list.txt`` with
    lines ``filename,overall,textual`` (the file name with or without ``.wav``; a header
    line is skipped). The system id is the first ``_``-separated field of the file name
    and the prompt id the second, after removing :data:`MUSICEVAL_PREFIX` and the suffix
    (``audiomos2025-track1-S002_P044.wav`` -> system ``S002``, prompt ``P044``).

    Captions are optional: they come from ``prompt_info.txt`` (prompt id -> text) and
    ``demo_prompt_info.txt`` (file name -> text), looked for in ``root/sets`` and then
    ``root``, with tab- or comma-separated ``id``/``text`` columns. A clip whose text is not
    found, or every clip when there is no prompt file, gets caption None.

    Args:
        root: The MusicEval folder.
        split: ``"train"`` or ``"dev"`` (``"valid"`` is taken as ``"dev"``).

    Returns:
        The clips of the list file in its order, ``mos`` = overall, ``ta`` = textual.

    Raises:
        ConfigError: On an unknown split or a missing root folder.
        ManifestError: On a missing list file, a malformed line, a non-numeric score, a
            duplicate entry or a missing wav (naming the list file and line).
    """
    root = Path(root)
    if split not in _MUSICEVAL_SPLITS:
        raise ConfigError(f"unknown MusicEval split {split!r}; use 'train' or 'dev'")
    if not root.is_dir():
        raise ConfigError(f"MusicEval folder {root} not found")
    return _musiceval_list(root, _MUSICEVAL_SPLITS[split], _musiceval_prompts(root))


# --------------------------------------------------------------------------- CSV


def load_csv_ratings(path: str | os.PathLike, split: str = "train") -> list[RatedClip]:
    """Read a CSV of ``path,mos[,caption]`` rows.

    The first line is taken as a header when its second field is not a number. Audio
    paths are relative to the CSV's folder (or absolute); a caption with unquoted commas
    is kept whole. The clip id is the path as written; the system is the audio file's
    parent folder name.

    Args:
        path: The CSV file.
        split: Split name given to every clip.

    Returns:
        The clips in file order.

    Raises:
        ManifestError: If the file is missing, or a row has too few fields, an empty path,
            a MOS that is not a finite number, a duplicate path or a missing audio file
            (naming the line and field).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError("CSV file not found", path=path)
    folder = path.parent
    clips: list[RatedClip] = []
    seen: dict[str, int] = {}
    first = True
    for lineno, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        fields = _split_csv_line(line)
        is_first, first = first, False
        if is_first and len(fields) >= 2 and _parse_score(fields[1]) is None:
            continue  # header
        if len(fields) < 2:
            raise ManifestError(
                f"expected 'path,mos[,caption]', got {line!r}", path=path, line=lineno
            )
        audio, mos_text = fields[0], fields[1]
        if not audio:
            raise ManifestError("empty audio path", path=path, line=lineno, field="path")
        mos = _parse_score(mos_text)
        if mos is None:
            raise ManifestError(
                f"not a finite number: {mos_text!r}", path=path, line=lineno, field="mos"
            )
        if audio in seen:
            raise ManifestError(
                f"duplicate path {audio!r}, already on line {seen[audio]}",
                path=path,
                line=lineno,
                field="path",
            )
        seen[audio] = lineno
        audio_path = folder / audio
        if not audio_path.is_file():
            raise ManifestError(
                f"audio file {audio_path} not found", path=path, line=lineno, field="path"
            )
        # More than three fields: an unquoted caption with commas, kept as written.
        if len(fields) > 3:
            caption = line.split(",", 2)[2].strip() or None
        else:
            caption = (fields[2] if len(fields) == 3 else "") or None
        clips.append(
            RatedClip(
                id=audio,
                path=audio_path,
                mos=mos,
                caption=caption,
                system=audio_path.parent.name,
                split=split,
                meta={"line": lineno},
            )
        )
    return clips

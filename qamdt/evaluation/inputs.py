"""The clips an evaluation scores: generated files with their sidecars, and reference clips.

The generated folder is what ``qamdt generate`` writes: ``NAME.wav`` (or ``.flac``) with a
sidecar ``NAME.json`` holding at least ``{"prompt": str, "quality_level": int | float |
null, "seed": int}``; the prompt is the user's text WITHOUT the quality prefix. An optional
``"reference_id"`` names the reference clip the sample was generated for (a manifest
``id`` or a reference file's stem); without it the file's stem is used. Clips whose keys
match a reference clip are paired for KL, as audioldm_eval pairs by file name. The
sidecar's format, and its reader, are in :mod:`qamdt.generation.sidecar`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.audio_io import load_audio
from qamdt.errors import ConfigError, QamdtError
from qamdt.generation.sidecar import read_sidecar

GENERATED_SUFFIXES = (".wav", ".flac")
REFERENCE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclasses.dataclass
class GeneratedClip:
    """One generated file and its sidecar.

    Attributes:
        name: File stem.
        path: The audio file.
        prompt: The prompt, without the quality prefix.
        level: Quality level it was generated at (``None``: no quality control).
        seed: Sampling seed, when given.
        key: Pairing key: the sidecar's ``reference_id``, else ``name``.
    """

    name: str
    path: Path
    prompt: str
    level: int | float | None
    seed: int | None
    key: str


@dataclasses.dataclass
class ReferenceClip:
    """One reference clip.

    Attributes:
        key: Manifest ``id`` or file stem (what generated keys pair with).
        path: The audio file.
        offset: Start in the file, seconds.
        duration: Length in seconds, ``None`` to the end.
        text: Its caption, when known (for text-aware MOS models).
    """

    key: str
    path: Path
    offset: float = 0.0
    duration: float | None = None
    text: str | None = None


# ------------------------------------------------------------------------------ inputs


def read_generated(folder: str | os.PathLike) -> tuple[list[GeneratedClip], list[dict]]:
    """Lists the generated clips of a folder and checks their sidecars.

    Args:
        folder: Folder of ``NAME.wav`` + ``NAME.json`` pairs.

    Returns:
        ``(clips, failures)``: the clips in name order, and a ``{"file", "set",
        "reason"}`` record per audio file whose sidecar is missing or invalid.

    Raises:
        QamdtError: If the folder does not exist or holds no audio file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise QamdtError(f"{folder}: generated folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in GENERATED_SUFFIXES)
    if not files:
        raise QamdtError(f"{folder}: no generated audio ({', '.join(GENERATED_SUFFIXES)}) found")
    clips, failures = [], []
    for path in files:
        try:
            clips.append(_read_sidecar(path))
        except QamdtError as error:
            failures.append({"file": str(path), "set": "generated", "reason": str(error)})
    return clips, failures


def _read_sidecar(audio: Path) -> GeneratedClip:
    sidecar = read_sidecar(audio.with_suffix(".json"))
    level = sidecar.settings.quality_level
    if isinstance(level, float) and level.is_integer():
        level = int(level)
    key = sidecar.reference_id or audio.stem
    return GeneratedClip(audio.stem, audio, sidecar.prompt, level, sidecar.settings.seed, key)


def parse_reference_filter(text: str) -> Callable[[Any], bool]:
    """Turns a ``--reference-filter`` value into a predicate on manifest records.

    Args:
        text: ``"all"``; ``"clean"`` (rows whose ``meta.degradations`` is an empty list:
            the corpus's undegraded clips); or ``"quality>=K"`` (rows labelled with a
            quality level of at least ``K``).

    Raises:
        ConfigError: On any other value.
    """
    text = text.strip()
    if text == "all":
        return lambda record: True
    if text == "clean":
        return lambda record: record.meta.get("degradations", None) == []
    if text.startswith("quality>="):
        try:
            threshold = float(text[len("quality>=") :])
        except ValueError:
            threshold = None
        if threshold is not None:
            return lambda r: r.quality_level is not None and r.quality_level >= threshold
    raise ConfigError(f"reference filter {text!r}: use 'all', 'clean' or 'quality>=K'")


def read_reference(
    reference: str | os.PathLike, split: str = "test", reference_filter: str = "all"
) -> tuple[list[ReferenceClip], dict[str, Any]]:
    """The reference clips: a manifest's rows (one split, filtered) or a folder's files.

    Args:
        reference: A manifest (JSONL) or a folder of audio files.
        split: Manifest split to use, or ``"all"``.
        reference_filter: See :func:`parse_reference_filter`; folders take only ``"all"``.

    Returns:
        ``(clips, description)``; the description says where they came from.

    Raises:
        ConfigError: On a filter a folder cannot apply, or when nothing is left.
        QamdtError: If the reference does not exist or the manifest is invalid.
    """
    path = Path(reference)
    if path.is_dir():
        if reference_filter != "all":
            raise ConfigError(
                f"reference filter {reference_filter!r} needs a manifest; {path} is a folder"
            )
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in REFERENCE_SUFFIXES)
        clips, seen = [], set()
        for file in files:
            if file.stem not in seen:
                seen.add(file.stem)
                clips.append(ReferenceClip(file.stem, file))
        description = {"source": str(path), "kind": "folder"}
    elif path.is_file():
        from qamdt.manifest import read_manifest

        keep = parse_reference_filter(reference_filter)
        records = read_manifest(path)
        folder = path.parent
        clips = [
            ReferenceClip(
                r.id,
                r.audio_path(folder),
                r.offset,
                r.duration,
                r.final_caption or r.original_caption,
            )
            for r in records
            if (split == "all" or r.split == split) and keep(r)
        ]
        description = {
            "source": str(path),
            "kind": "manifest",
            "split": split,
            "filter": reference_filter,
        }
    else:
        raise QamdtError(f"{path}: reference manifest or folder not found")
    if not clips:
        where = f"split '{split}', filter '{reference_filter}'" if path.is_file() else "folder"
        raise ConfigError(f"{path}: no reference clips ({where})")
    return clips, description


def load_generated(clip: GeneratedClip) -> tuple[np.ndarray, int]:
    """The audio of a generated clip (silence allowed)."""
    return load_audio(clip.path, allow_silent=True)


def load_reference(clip: ReferenceClip) -> tuple[np.ndarray, int]:
    """The audio of a reference clip, its excerpt only (silence allowed)."""
    return load_audio(clip.path, offset=clip.offset, duration=clip.duration, allow_silent=True)

"""Helpers for batch stages that process manifest rows (p-MOS labelling, caption refinement).

A stage runs inside a :class:`~qamdt.manifest.stage_state.StageRun`, which locks the
manifest, resumes from the shards of a killed run and merges the finished rows back; see
that module for the files involved.
"""

from __future__ import annotations

import os

import numpy as np

from qamdt.audio_io import load_audio
from qamdt.errors import QamdtError
from qamdt.manifest.record import ClipRecord

MIN_CLIP_SECONDS = 0.5
"""Clips shorter than this are not scored or captioned: the row records why."""


def load_clip_audio(
    record: ClipRecord, manifest_dir: str | os.PathLike, min_seconds: float = 0.0
) -> tuple[np.ndarray, int]:
    """The clip's audio (mono, at the file's rate), honouring its offset and duration.

    Args:
        record: The row.
        manifest_dir: The folder of the (real) manifest file.
        min_seconds: Shortest clip accepted.

    Raises:
        QamdtError: If the audio cannot be read, or is shorter than ``min_seconds``.
    """
    wave, rate = load_audio(
        record.audio_path(manifest_dir), offset=record.offset, duration=record.duration
    )
    seconds = len(wave) / rate if rate else 0.0
    if seconds < min_seconds:
        raise QamdtError(
            f"{record.audio_path(manifest_dir)}: clip {record.id!r} is {seconds:.3f} s long, "
            f"shorter than the {min_seconds} s minimum"
        )
    return wave, rate

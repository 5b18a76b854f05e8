"""Helpers for batch stages that process manifest rows (p-MOS labelling, caption refinement).

A stage runs inside a :class:`~qamdt.manifest.stage_state.StageRun`, which locks the
manifest, resumes from the shards of a killed run and merges the finished rows back; see
that module for the files involved.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import functools
import itertools
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

from qamdt.audio_io import load_audio
from qamdt.errors import QamdtError
from qamdt.manifest.reading import iter_manifest
from qamdt.manifest.record import ClipRecord

T = TypeVar("T")

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


def load_batch(
    batch: list[ClipRecord], manifest_dir: str | os.PathLike, min_seconds: float
) -> list[tuple[np.ndarray | None, int | None, str | None]]:
    """``(wave, rate, None)`` for each clip of a batch, or ``(None, None, reason)``."""
    loaded = []
    for record in batch:
        try:
            wave, rate = load_clip_audio(record, manifest_dir, min_seconds)
            loaded.append((wave, rate, None))
        except QamdtError as error:
            loaded.append((None, None, str(error)))
    return loaded


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def prefetched(
    batches: Iterable[list[ClipRecord]],
    manifest_dir: str | os.PathLike,
    min_seconds: float,
    workers: int = 0,
) -> Iterator[tuple[list[ClipRecord], list[tuple]]]:
    """``(batch, loaded)`` in order, the audio decoded ahead of the caller.

    With ``workers`` >= 1, that many processes decode; at most ``2 * workers`` batches
    are in flight, so memory stays bounded however many rows come. With 0, one thread
    decodes the next batch while the caller works on the current one.

    Args:
        batches: Batches of rows (read lazily).
        manifest_dir: The folder relative audio paths are resolved against.
        min_seconds: Shortest clip accepted (see :func:`load_clip_audio`).
        workers: Decoding processes (0: one thread).
    """
    load = functools.partial(load_batch, manifest_dir=manifest_dir, min_seconds=min_seconds)
    if workers >= 1:
        # fork: the workers only decode (numpy, soundfile) and start at once.
        context = multiprocessing.get_context("fork")
        pool = futures.ProcessPoolExecutor(workers, mp_context=context)
        depth = 2 * workers
    else:
        pool = futures.ThreadPoolExecutor(1)
        depth = 1
    with pool:
        pending: collections.deque = collections.deque()
        source = iter(batches)
        for batch in source:
            pending.append((batch, pool.submit(load, batch)))
            if len(pending) > depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def check_manifest(path: str | os.PathLike) -> int:
    """Validates a whole manifest (fields, unique ids) before a stage acts on it.

    Returns:
        Its row count.

    Raises:
        ManifestError: The first problem, naming the file, line and field.
    """
    return sum(1 for _ in iter_manifest(path))

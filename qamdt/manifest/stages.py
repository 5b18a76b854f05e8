"""Helpers for batch stages that process manifest rows (p-MOS labelling, caption refinement).

A stage run as several processes gives each process one shard of the rows; each appends
its finished rows to its own shard file beside the manifest, and the main process merges
the shards back into the manifest once every process is done.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qamdt.audio_io import load_audio
from qamdt.manifest.record import ClipRecord
from qamdt.manifest.shards import merge_manifests


def load_clip_audio(record: ClipRecord, manifest_dir: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The clip's audio (mono, at the file's rate), honouring its offset and duration."""
    return load_audio(
        record.audio_path(manifest_dir), offset=record.offset, duration=record.duration
    )


def rank_shard_path(manifest: str | os.PathLike, stage: str, rank: int) -> Path:
    """Shard file of process ``rank`` for ``stage``, beside the manifest."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.{stage}-shard{rank}.jsonl")


def merge_rank_shards(manifest: str | os.PathLike, stage: str, state) -> None:
    """Waits for every process, merges their shards into the manifest, removes them.

    Args:
        manifest: The manifest the shards update.
        stage: Stage name used in the shard file names.
        state: The Accelerate ``PartialState`` of the run.
    """
    state.wait_for_everyone()
    if state.is_main_process:
        shards = [rank_shard_path(manifest, stage, r) for r in range(state.num_processes)]
        merge_manifests(manifest, [s for s in shards if s.is_file()], base_path=manifest)
        for path in shards:
            path.unlink(missing_ok=True)
    state.wait_for_everyone()

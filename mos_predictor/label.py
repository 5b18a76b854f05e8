"""Labelling a clip manifest with p-MOS.

Every row without a ``pmos`` is scored (the mean over the model's fixed-length windows) and
written back. Rows already scored are skipped, so a killed run resumes; rows that failed
before are tried again. Under
``accelerate launch`` each process scores one shard of the rows and appends them to its own
shard file; the main process then merges the shards into the manifest. A clip that cannot
be read, or is shorter than :data:`~qamdt.manifest.stages.MIN_CLIP_SECONDS`, is recorded in
its row's ``errors["mos"]`` and the run goes on. The run is a
:class:`~qamdt.manifest.stage_state.StageRun`: it owns ``pmos``, ``meta.pmos_ta`` and
``errors.mos`` and nothing else of a row, and resumes only from shards of the same model.

The manifest is streamed: rows are read, scored in batches and appended as they come, the
audio decoded ahead of the model by worker processes (``workers``) through a bounded
queue, so memory does not grow with the manifest. With ``part=(I, N)`` the run labels
part I of N of the rows (:mod:`qamdt.manifest.parts`) into its own part file.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from qamdt.errors import QamdtError
from qamdt.manifest import ClipRecord, iter_manifest
from qamdt.manifest.parts import finish_part, stage_target
from qamdt.manifest.stage_state import StageRun, content_hash, stage_identity
from qamdt.manifest.stages import MIN_CLIP_SECONDS, batched, check_manifest, prefetched

ERROR_KEY = "mos"
STAGE = "pmos"
FIELDS = ("pmos", "meta.pmos_ta", f"errors.{ERROR_KEY}")


def label_manifest(
    manifest: str | os.PathLike,
    model,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    resume_anyway: bool = False,
    min_seconds: float = MIN_CLIP_SECONDS,
    workers: int = 0,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Writes p-MOS (and text alignment, for text-aware models) into a manifest.

    Args:
        manifest: The manifest, updated in place (where it really lives: a link is
            followed).
        model: A ``MosModel``.
        batch_size: Clips scored per call (their windows are batched together).
        overwrite: Score rows that already have a p-MOS too.
        progress: Show a progress bar.
        resume_anyway: Resume from a shard written by another model or settings.
        min_seconds: Shortest clip scored.
        workers: Processes decoding audio ahead of the model (0: one thread).
        part: ``(I, N)``: label only part I of N into its part file (``--shard I/N``).

    Returns:
        Counts of rows scored, skipped and failed, and the throughput.

    Raises:
        QamdtError: A missing manifest, an invalid argument, or another run on it.
    """
    from accelerate import PartialState

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise QamdtError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise QamdtError(f"workers must be a whole number >= 0, got {workers!r}")
    # cpu=True lets processes started by torchrun on a machine without GPUs form a group.
    state = PartialState(cpu=not torch.cuda.is_available())
    text_aware = model.config.kind == "text-aware"
    settings = {"overwrite": overwrite, "min_seconds": min_seconds}
    identity = stage_identity(STAGE, FIELDS, content_hash(model), settings)
    target = stage_target(manifest, identity, part, state, resume_anyway)
    run = StageRun(
        target, STAGE, FIELDS, identity["model"], settings, state, resume_anyway
    )  # fmt: skip
    with run:
        check_manifest(run.manifest)
        counts = {"rows": 0, "to_score": 0}

        def mine() -> Iterator[ClipRecord]:
            for record in iter_manifest(run.manifest, validate=False):
                counts["rows"] += 1
                if (overwrite or record.pmos is None) and record.id not in run.resumed_ids:
                    if counts["to_score"] % state.num_processes == state.process_index:
                        yield record
                    counts["to_score"] += 1

        started = time.time()
        scored, failed = _label_rows(
            run, mine(), model, text_aware, batch_size, min_seconds, workers, progress, state
        )
        seconds = time.time() - started
        run.merge()
    if part is not None:
        finish_part(run.manifest, state)
    return {
        "rows": counts["rows"],
        "to_score": counts["to_score"],
        "scored": scored,
        "failed": failed,
        "skipped": counts["rows"] - counts["to_score"],
        "seconds": round(seconds, 2),
        "clips_per_second": round(scored / seconds, 2) if seconds > 0 and scored else None,
        **({"part": str(run.manifest)} if part is not None else {}),
    }


def _label_rows(run, rows, model, text_aware, batch_size, min_seconds, workers, progress, state):
    """Scores this process's rows into its shard; returns the counts scored and failed."""
    from tqdm import tqdm

    scored = failed = 0
    bar = tqdm(unit="clip", desc="p-MOS", file=sys.stderr,
               disable=not progress or not state.is_local_main_process)  # fmt: skip
    with run.appender() as appender:
        for batch, loaded in prefetched(
            batched(rows, batch_size), run.folder, min_seconds, workers
        ):
            for record in _score_batch(model, batch, loaded, text_aware, batch_size):
                appender.append(record)
                if ERROR_KEY in record.errors:
                    failed += 1
                else:
                    scored += 1
            bar.update(len(batch))
    bar.close()
    return scored, failed


def _score_batch(
    model, batch: list[ClipRecord], loaded: list[tuple], text_aware: bool, batch_size: int
) -> list[ClipRecord]:
    """The batch's rows with p-MOS written in, or the reason a clip failed."""
    good = [i for i, (_, _, error) in enumerate(loaded) if error is None]
    scores = []
    if good:
        texts = [_caption(batch[i]) for i in good] if text_aware else None
        scores = model.predict(
            [loaded[i][0] for i in good],
            [loaded[i][1] for i in good],
            texts=texts,
            batch_size=batch_size,
        )
    score_of = dict(zip(good, scores, strict=True))
    updated = []
    for i, record in enumerate(batch):
        errors = {k: v for k, v in record.errors.items() if k != ERROR_KEY}
        if i not in score_of:
            updated.append(record.replace(errors={**errors, ERROR_KEY: loaded[i][2]}))
            continue
        meta = dict(record.meta)
        if "ta" in score_of[i]:
            meta["pmos_ta"] = round(float(score_of[i]["ta"]), 4)
        pmos = round(float(score_of[i]["omq"]), 4)
        updated.append(record.replace(pmos=pmos, errors=errors, meta=meta))
    return updated


def _caption(record: ClipRecord) -> str:
    return record.final_caption or record.original_caption or ""

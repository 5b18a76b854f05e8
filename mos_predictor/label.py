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
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from qamdt.errors import QamdtError
from qamdt.manifest import ClipRecord, read_manifest, shard_records
from qamdt.manifest.stage_state import StageRun, content_hash
from qamdt.manifest.stages import MIN_CLIP_SECONDS, load_clip_audio

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

    Returns:
        Counts of rows scored, skipped and failed, and the throughput.

    Raises:
        QamdtError: A missing manifest, an invalid argument, or another run on it.
    """
    from accelerate import PartialState

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise QamdtError(f"batch_size must be a positive integer, got {batch_size!r}")
    # cpu=True lets processes started by torchrun on a machine without GPUs form a group.
    state = PartialState(cpu=not torch.cuda.is_available())
    text_aware = model.config.kind == "text-aware"
    settings = {"overwrite": overwrite, "min_seconds": min_seconds}
    run = StageRun(manifest, STAGE, FIELDS, content_hash(model), settings, state, resume_anyway)
    with run:
        records = read_manifest(run.manifest)
        todo = [r for r in records if (overwrite or r.pmos is None) and r.id not in run.resumed_ids]
        mine = shard_records(todo, state.num_processes, state.process_index)
        started = time.time()
        scored, failed = _label_rows(
            run, mine, model, text_aware, batch_size, min_seconds, progress, state
        )
        seconds = time.time() - started
        run.merge()
    return {
        "rows": len(records),
        "to_score": len(todo),
        "scored": scored,
        "failed": failed,
        "skipped": len(records) - len(todo),
        "seconds": round(seconds, 2),
        "clips_per_second": round(scored / seconds, 2) if seconds > 0 and scored else None,
    }


def _label_rows(run, mine, model, text_aware, batch_size, min_seconds, progress, state):
    """Scores this process's rows into its shard; returns the counts scored and failed."""
    from tqdm import tqdm

    manifest_dir = run.folder
    scored = failed = 0
    with run.appender() as appender:
        pending = [r for r in mine if r.id not in appender]
        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), unit="clip", desc="p-MOS",
                   disable=not progress or not state.is_local_main_process,
                   file=sys.stderr)  # fmt: skip
        # Decoding runs in a thread while the model scores the previous batch.
        batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
        with futures.ThreadPoolExecutor(max_workers=1) as pool:

            def load(batch):
                return _load_batch(batch, manifest_dir, min_seconds)

            loading = pool.submit(load, batches[0]) if batches else None
            for index, batch in enumerate(batches):
                loaded = loading.result()
                if index + 1 < len(batches):
                    loading = pool.submit(load, batches[index + 1])
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


def _load_batch(batch: list[ClipRecord], manifest_dir: Path, min_seconds: float) -> list[tuple]:
    loaded = []
    for record in batch:
        try:
            wave, rate = load_clip_audio(record, manifest_dir, min_seconds)
            loaded.append((wave, rate, None))
        except QamdtError as error:
            loaded.append((None, None, str(error)))
    return loaded

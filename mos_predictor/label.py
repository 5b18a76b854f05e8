"""Labelling a clip manifest with p-MOS.

Every row without a ``pmos`` is scored (the mean over the model's fixed-length windows) and
written back. Rows already scored are skipped, so a killed run resumes; rows that failed
before are tried again. Under
``accelerate launch`` each process scores one shard of the rows and appends them to its own
shard file; the main process then merges the shards into the manifest. A clip that cannot
be read is recorded in its row's ``errors["mos"]`` and the run goes on.
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
from qamdt.manifest import (
    ClipRecord,
    ManifestAppender,
    read_manifest,
    shard_records,
)
from qamdt.manifest.stages import load_clip_audio, merge_rank_shards, rank_shard_path

ERROR_KEY = "mos"


STAGE = "pmos"


def label_manifest(
    manifest: str | os.PathLike,
    model,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes p-MOS (and text alignment, for text-aware models) into a manifest.

    Args:
        manifest: The manifest, updated in place.
        model: A ``MosModel``.
        batch_size: Clips scored per call (their windows are batched together).
        overwrite: Score rows that already have a p-MOS too.
        progress: Show a progress bar.

    Returns:
        Counts of rows scored, skipped and failed, and the throughput.
    """
    from accelerate import PartialState
    from tqdm import tqdm

    # cpu=True lets processes started by torchrun on a machine without GPUs form a group.
    state = PartialState(cpu=not torch.cuda.is_available())
    manifest = Path(manifest)
    if not manifest.is_file():
        raise QamdtError(f"{manifest}: manifest not found")
    records = read_manifest(manifest)
    todo = [r for r in records if overwrite or r.pmos is None]
    mine = shard_records(todo, state.num_processes, state.process_index)
    shard = rank_shard_path(manifest, STAGE, state.process_index)
    text_aware = model.config.kind == "text-aware"
    manifest_dir = manifest.parent

    scored = failed = 0
    started = time.time()
    with ManifestAppender(shard, source_dir=manifest_dir) as appender:
        pending = [r for r in mine if r.id not in appender]
        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), unit="clip", desc="p-MOS",
                   disable=not progress or not state.is_local_main_process,
                   file=sys.stderr)  # fmt: skip
        # Decoding runs in a thread while the model scores the previous batch.
        batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
        with futures.ThreadPoolExecutor(max_workers=1) as pool:
            loading = pool.submit(_load_batch, batches[0], manifest_dir) if batches else None
            for index, batch in enumerate(batches):
                loaded = loading.result()
                if index + 1 < len(batches):
                    loading = pool.submit(_load_batch, batches[index + 1], manifest_dir)
                for record in _score_batch(model, batch, loaded, text_aware, batch_size):
                    appender.append(record)
                    if ERROR_KEY in record.errors:
                        failed += 1
                    else:
                        scored += 1
                bar.update(len(batch))
        bar.close()
    seconds = time.time() - started
    merge_rank_shards(manifest, STAGE, state)
    return {
        "rows": len(records),
        "to_score": len(todo),
        "scored": scored,
        "failed": failed,
        "skipped": len(records) - len(todo),
        "seconds": round(seconds, 2),
        "clips_per_second": round(scored / seconds, 2) if seconds > 0 and scored else None,
    }


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


def _load_batch(batch: list[ClipRecord], manifest_dir: Path) -> list[tuple]:
    loaded = []
    for record in batch:
        try:
            wave, rate = load_clip_audio(record, manifest_dir)
            loaded.append((wave, rate, None))
        except QamdtError as error:
            loaded.append((None, None, str(error)))
    return loaded

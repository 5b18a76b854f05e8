"""Caption refinement of a manifest (paper eqs. 8-10).

Stage 1, per clip (batched, resumable, split across processes like p-MOS labelling):
generate a caption when a captioner is given and CLAP-score the captions: ``clap`` gets
``generated_audio`` = S(T_g, M), ``original_audio`` = S(T_o, M) and
``original_generated`` = S(T_o, T_g).

Stage 2, over the whole manifest: resolve the thresholds (numbers, or percentiles of the
scores, since a scorer trained here has its own scale) and choose each clip's caption:

* eq. 8: a generated caption is usable only if S(T_g, M) > rho1;
* eq. 9: an original caption is usable only if S(T_o, M) > rho2 (missing ones never are);
* eq. 10: when both are usable and S(T_o, T_g) < rho3 they are merged (LLM or rule-based);
  when both are usable and agree, the generated sentence is kept;
* one usable caption is kept as it is; with none, the clip has no caption.

Every row records its scores, the thresholds and the branch it took in ``meta["refine"]``.

Both stages stream the manifest: stage 1 decodes audio ahead of the models in worker
processes (``workers``, a bounded queue) and appends rows as they are scored; stage 2
reads the scores in one pass (three numbers per row, for the percentiles) and rewrites the
rows in a second. With ``part=(I, N)`` stage 1 scores part I of N of the rows into its
part file (:mod:`qamdt.manifest.parts`); stage 2 then runs on the merged manifest.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.errors import ConfigError, QamdtError, dataclass_from_dict
from qamdt.manifest import ClipRecord, iter_manifest, write_manifest
from qamdt.manifest.parts import finish_part, stage_target
from qamdt.manifest.stage_state import (
    StageRun,
    content_hash,
    manifest_lock,
    real_manifest,
    stage_identity,
)
from qamdt.manifest.stages import MIN_CLIP_SECONDS, batched, check_manifest, prefetched

ERROR_KEY = "captions"
BRANCHES = ("merged", "generated", "original", "none")


@dataclasses.dataclass(frozen=True)
class RefineSettings:
    """Thresholds of eqs. 8-10 (the paper's defaults).

    Each threshold is a number, or ``"pX"`` for the X-th percentile of that score over the
    manifest (e.g. ``rho1="p8.9"`` filters the 8.9% least aligned generated captions, the
    share the paper reports).

    Attributes:
        rho1: Generated captions need S(T_g, M) above this (eq. 8).
        rho2: Original captions need S(T_o, M) above this (eq. 9).
        rho3: Usable pairs with S(T_o, T_g) below this are merged (eq. 10).
    """

    rho1: float | str = 0.1
    rho2: float | str = 0.1
    rho3: float | str = 0.25

    def __post_init__(self):
        for name in ("rho1", "rho2", "rho3"):
            parse_threshold(getattr(self, name), name)


def parse_threshold(value: float | str, name: str = "threshold") -> tuple[str, float]:
    """``("absolute", x)`` for a number, ``("percentile", p)`` for ``"pX"``.

    Raises:
        ConfigError: Naming the setting when the value is neither.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "absolute", float(value)
    text = str(value).strip().lower()
    try:
        if text.startswith("p"):
            percentile = float(text[1:])
            if 0.0 <= percentile <= 100.0:
                return "percentile", percentile
        else:
            return "absolute", float(text)
    except ValueError:
        pass
    raise ConfigError(f"{name}: expected a number or 'pX' (a percentile 0-100), got {value!r}")


def _present(caption: str | None) -> bool:
    return bool(caption and caption.strip())


STAGE = "captions"
FIELDS = ("generated_caption", "clap", f"errors.{ERROR_KEY}")


def _score_batch(records: list[ClipRecord], loaded: list[tuple], clap, captioner, regenerate):
    """Rows of one batch, in order, with generated captions and CLAP scores or errors."""
    good = [i for i, (_, _, error) in enumerate(loaded) if error is None]
    waves = [loaded[i][0] for i in good]
    rates = [loaded[i][1] for i in good]
    generated = [records[i].generated_caption for i in good]
    if captioner is not None:
        todo = [k for k, text in enumerate(generated) if regenerate or not _present(text)]
        if todo:
            fresh = captioner.caption([waves[k] for k in todo], [rates[k] for k in todo])
            for k, text in zip(todo, fresh, strict=True):
                generated[k] = text
    audio_embeddings = clap.embed_audio(waves, rates) if good else []
    originals = [records[i].original_caption for i in good]
    texts = [t for t in originals + generated if _present(t)]
    text_embeddings = dict(zip(texts, clap.embed_text(texts), strict=True)) if texts else {}
    updated = list(records)
    for i, record in enumerate(records):
        errors = {k: v for k, v in record.errors.items() if k != ERROR_KEY}
        if loaded[i][2] is not None:
            updated[i] = record.replace(errors={**errors, ERROR_KEY: loaded[i][2]})
    for k, i in enumerate(good):
        scores = {}
        if _present(generated[k]):
            scores["generated_audio"] = float(audio_embeddings[k] @ text_embeddings[generated[k]])
        if _present(originals[k]):
            scores["original_audio"] = float(audio_embeddings[k] @ text_embeddings[originals[k]])
        if _present(generated[k]) and _present(originals[k]):
            scores["original_generated"] = float(
                text_embeddings[originals[k]] @ text_embeddings[generated[k]]
            )
        record = records[i]
        updated[i] = record.replace(
            generated_caption=generated[k],
            clap={**record.clap, **{key: round(v, 5) for key, v in scores.items()}},
            errors={key: v for key, v in record.errors.items() if key != ERROR_KEY},
        )
    return updated


def score_manifest(
    manifest: str | os.PathLike,
    clap,
    captioner=None,
    batch_size: int = 16,
    regenerate: bool = False,
    progress: bool = True,
    resume_anyway: bool = False,
    min_seconds: float = MIN_CLIP_SECONDS,
    workers: int = 0,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Stage 1: generated captions and CLAP scores for every row not yet scored.

    A row counts as scored when its ``clap`` holds the scores its captions allow. Under
    ``torchrun`` / ``accelerate launch`` each process scores one shard; the main process
    merges them. The run is a :class:`~qamdt.manifest.stage_state.StageRun` owning
    ``generated_caption``, ``clap`` and ``errors.captions``; it resumes only from shards
    written with the same CLAP scorer, captioner and settings (or with ``resume_anyway``).

    Args:
        manifest: The manifest, updated in place.
        clap: A ``ClapScorer``.
        captioner: A ``Captioner`` (None: score the generated captions already there).
        batch_size: Clips per batch.
        regenerate: Caption again rows that already have a generated caption.
        progress: Show a progress bar.
        resume_anyway: Resume from a shard of another scorer, captioner or settings.
        min_seconds: Shortest clip scored.
        workers: Processes decoding audio ahead of the models (0: one thread).
        part: ``(I, N)``: score only part I of N into its part file (``--shard I/N``).

    Returns:
        Counts of rows scored, failed and skipped (and the part file, for a part).
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    settings = {"regenerate": regenerate, "min_seconds": min_seconds}
    identity = stage_identity(STAGE, FIELDS, content_hash(clap, captioner), settings)
    target = stage_target(manifest, identity, part, state, resume_anyway)
    with StageRun(target, STAGE, FIELDS, identity["model"], settings, state, resume_anyway) as run:
        summary = _score_rows(
            run, state, clap, captioner, batch_size, regenerate, progress, min_seconds, workers
        )
    if part is not None:
        finish_part(run.manifest, state)
        summary["part"] = str(run.manifest)
    return summary


def _needs_scores(record: ClipRecord, captioner, regenerate: bool) -> bool:
    if regenerate or (captioner is not None and not _present(record.generated_caption)):
        return True
    wanted = set()
    if _present(record.generated_caption):
        wanted.add("generated_audio")
    if _present(record.original_caption):
        wanted.add("original_audio")
    if len(wanted) == 2:
        wanted.add("original_generated")
    return not wanted <= set(record.clap) or ERROR_KEY in record.errors


def _score_rows(
    run, state, clap, captioner, batch_size, regenerate, progress, min_seconds, workers
):  # fmt: skip
    from tqdm import tqdm

    check_manifest(run.manifest)
    counts = {"rows": 0, "todo": 0}

    def mine() -> Iterator[ClipRecord]:
        for record in iter_manifest(run.manifest, validate=False):
            counts["rows"] += 1
            if _needs_scores(record, captioner, regenerate) and record.id not in run.resumed_ids:
                if counts["todo"] % state.num_processes == state.process_index:
                    yield record
                counts["todo"] += 1

    scored = failed = 0
    bar = tqdm(unit="clip", desc="captions", file=sys.stderr,
               disable=not progress or not state.is_local_main_process)  # fmt: skip
    with run.appender() as appender:
        batches = prefetched(batched(mine(), batch_size), run.folder, min_seconds, workers)
        for batch, loaded in batches:
            for record in _score_batch(batch, loaded, clap, captioner, regenerate):
                appender.append(record)
                failed += ERROR_KEY in record.errors
                scored += ERROR_KEY not in record.errors
            bar.update(len(batch))
    bar.close()
    run.merge()
    return {"scored": scored, "failed": failed, "skipped": counts["rows"] - counts["todo"]}


_SOURCES = {"rho1": "generated_audio", "rho2": "original_audio", "rho3": "original_generated"}


def resolve_thresholds(records: Iterable[ClipRecord], settings: RefineSettings) -> dict[str, float]:
    """Numeric rho1..rho3: absolute values as given, percentiles over the rows' scores.

    ``records`` is read once (any iterable); only the scores are kept.
    """
    modes = {name: parse_threshold(getattr(settings, name), name) for name in _SOURCES}
    wanted = {name: key for name, key in _SOURCES.items() if modes[name][0] == "percentile"}
    scores: dict[str, list[float]] = {name: [] for name in wanted}
    if wanted:
        for record in records:
            for name, key in wanted.items():
                if key in record.clap:
                    scores[name].append(record.clap[key])
    resolved = {}
    for name, (mode, value) in modes.items():
        if mode == "absolute":
            resolved[name] = value
            continue
        values = np.array(scores[name], dtype=np.float64)
        if values.size == 0:
            key = _SOURCES[name]
            raise QamdtError(f"{name}: no '{key}' scores to take the {value}th percentile of")
        resolved[name] = float(np.percentile(values, value))
    return resolved


def choose_branch(record: ClipRecord, thresholds: dict[str, float]) -> str:
    """Which caption a scored row keeps (one of ``BRANCHES``), by eqs. 8-10."""
    g_ok = (
        _present(record.generated_caption)
        and record.clap.get("generated_audio", -math.inf) > thresholds["rho1"]
    )
    o_ok = (
        _present(record.original_caption)
        and record.clap.get("original_audio", -math.inf) > thresholds["rho2"]
    )
    if g_ok and o_ok:
        agree = record.clap.get("original_generated", math.inf)
        return "merged" if agree < thresholds["rho3"] else "generated"
    if g_ok:
        return "generated"
    return "original" if o_ok else "none"


def refine_manifest(
    manifest: str | os.PathLike,
    clap,
    captioner=None,
    merger=None,
    settings: RefineSettings | None = None,
    batch_size: int = 16,
    regenerate: bool = False,
    progress: bool = True,
    resume_anyway: bool = False,
    min_seconds: float = MIN_CLIP_SECONDS,
    workers: int = 0,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Runs both stages and writes ``final_caption`` and ``caption_source`` into the rows.

    Args:
        manifest: The manifest, updated in place.
        clap: A ``ClapScorer``.
        captioner: A ``Captioner`` for rows without a generated caption (None: use the
            generated captions already in the manifest).
        merger: Merger for eq. 10 (default: the rule-based one).
        settings: Thresholds.
        batch_size: Clips per batch in stage 1; merges per batch in stage 2.
        regenerate: Caption again rows that already have a generated caption.
        progress: Show progress bars.
        resume_anyway: Resume from a shard written by another scorer, captioner or
            settings.
        min_seconds: Shortest clip scored; shorter ones get ``errors["captions"]``.
        workers: Processes decoding audio ahead of the models in stage 1 (0: one thread).
        part: ``(I, N)``: run stage 1 on part I of N only (``--shard I/N``); stage 2 runs
            on the manifest once the parts are merged.

    Returns:
        The summary: thresholds, the share of generated captions filtered (eq. 8), of
        original captions dropped (eq. 9), of clips merged (eq. 10), and counts per branch.
        For a part, only ``stage1``.
    """
    import torch
    from accelerate import PartialState

    from captioning.merge import RuleMerger

    settings = settings or RefineSettings()
    merger = merger or RuleMerger()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise QamdtError(f"batch_size must be a positive integer, got {batch_size!r}")
    manifest = real_manifest(manifest)
    stage1 = score_manifest(
        manifest, clap, captioner, batch_size, regenerate, progress, resume_anyway, min_seconds,
        workers, part,
    )  # fmt: skip
    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process or part is not None:
        return {"stage1": stage1}
    return {"stage1": stage1, **choose_final_captions(manifest, merger, settings, batch_size)}


def choose_final_captions(
    manifest: str | os.PathLike, merger, settings: RefineSettings, batch_size: int = 16
) -> dict[str, Any]:
    """Stage 2 over the whole manifest, under its lock: thresholds, then final captions.

    Streams the manifest twice: once for the scores the percentile thresholds need, once
    to rewrite the rows.

    Args:
        manifest: A manifest whose rows stage 1 scored (updated in place).
        merger: Merger for eq. 10.
        settings: Thresholds.
        batch_size: Merges per call.

    Returns:
        Rows, thresholds, counts per branch and the shares filtered, dropped and merged.
    """
    manifest = real_manifest(manifest)
    with manifest_lock(manifest):
        return _choose_captions(manifest, merger, settings, batch_size)


def _choose_captions(manifest: Path, merger, settings, batch_size: int) -> dict:
    scored = (r for r in iter_manifest(manifest) if ERROR_KEY not in r.errors)
    thresholds = resolve_thresholds(scored, settings)
    counts = RefineCounts(thresholds)

    def rows() -> Iterator[ClipRecord]:
        for batch in batched(iter_manifest(manifest, validate=False), batch_size):
            for record in choose_captions(batch, thresholds, merger):
                counts.add(record)
                yield record

    write_manifest(manifest, rows(), keep_absolute=True)
    return counts.summary()


def choose_captions(
    batch: list[ClipRecord], thresholds: dict[str, float], merger
) -> list[ClipRecord]:
    """A batch of rows with ``final_caption``, ``caption_source`` and ``meta["refine"]``.

    Rows whose scoring failed are returned unchanged.
    """
    branches = {r.id: choose_branch(r, thresholds) for r in batch if ERROR_KEY not in r.errors}
    to_merge = [r for r in batch if branches.get(r.id) == "merged"]
    merged_text: dict[str, str] = {}
    if to_merge:
        texts = merger.merge(
            [r.original_caption for r in to_merge], [r.generated_caption for r in to_merge]
        )
        merged_text.update(zip((r.id for r in to_merge), texts, strict=True))
    out = []
    for record in batch:
        if record.id not in branches:
            out.append(record)
            continue
        branch = branches[record.id]
        final = {
            "merged": merged_text.get(record.id),
            "generated": record.generated_caption,
            "original": record.original_caption,
            "none": None,
        }[branch]
        meta = {**record.meta, "refine": {"branch": branch, **thresholds, "merger": merger.name}}
        out.append(
            record.replace(
                final_caption=final,
                caption_source="none" if branch == "none" else branch,
                meta=meta,
            )
        )
    return out


class RefineCounts:
    """The shares filtered and fused (the paper reports 8.9% and 15.1%), counted row by row.

    Args:
        thresholds: The resolved thresholds the rows were refined with.
    """

    def __init__(self, thresholds: dict[str, float]):
        self.thresholds = thresholds
        self.rows = self.refined = self.with_generated = self.with_original = 0
        self.filtered_generated = self.dropped_original = 0
        self.branches = dict.fromkeys(BRANCHES, 0)

    def add(self, record: ClipRecord) -> None:
        """Counts one row of the refined manifest."""
        self.rows += 1
        if "refine" not in record.meta:
            return
        self.refined += 1
        self.branches[record.meta["refine"]["branch"]] += 1
        if "generated_audio" in record.clap:
            self.with_generated += 1
            self.filtered_generated += record.clap["generated_audio"] <= self.thresholds["rho1"]
        if _present(record.original_caption):
            self.with_original += 1
            self.dropped_original += record.clap["original_audio"] <= self.thresholds["rho2"]

    def summary(self) -> dict[str, Any]:
        """Rows, thresholds, counts per branch and the shares filtered, dropped and merged."""
        return {
            "rows": self.rows,
            "refined": self.refined,
            "failed": self.rows - self.refined,
            "thresholds": {k: round(v, 5) for k, v in self.thresholds.items()},
            "branches": dict(self.branches),
            "generated_filtered_share": round(
                self.filtered_generated / max(self.with_generated, 1), 4
            ),
            "original_dropped_share": round(self.dropped_original / max(self.with_original, 1), 4),
            "merged_share": round(self.branches["merged"] / max(self.refined, 1), 4),
        }


def summarize_refinement(
    records: Iterable[ClipRecord], thresholds: dict[str, float]
) -> dict[str, Any]:
    """Shares filtered and fused, as the paper reports them (8.9% and 15.1%)."""
    counts = RefineCounts(thresholds)
    for record in records:
        counts.add(record)
    return counts.summary()


def load_refine_settings(values: dict[str, Any] | None) -> RefineSettings:
    """``RefineSettings`` from a mapping, naming unknown keys."""
    return dataclass_from_dict(
        RefineSettings, dict(values or {}), "refinement settings", noun="refinement setting"
    )

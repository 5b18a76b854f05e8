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
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.errors import ConfigError, QamdtError, dataclass_from_dict
from qamdt.manifest import ClipRecord, read_manifest, shard_records, write_manifest
from qamdt.manifest.stage_state import StageRun, content_hash, manifest_lock, real_manifest
from qamdt.manifest.stages import MIN_CLIP_SECONDS, load_clip_audio

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


def _score_batch(
    records: list[ClipRecord],
    manifest_dir: Path,
    clap,
    captioner,
    regenerate,
    min_seconds: float = MIN_CLIP_SECONDS,
):
    """Rows of one batch with generated captions and CLAP scores, or their errors."""
    loaded, failed = [], []
    for record in records:
        try:
            wave, rate = load_clip_audio(record, manifest_dir, min_seconds)
            loaded.append((record, wave, rate))
        except QamdtError as error:
            errors = {**record.errors, ERROR_KEY: str(error)}
            failed.append(record.replace(errors=errors))
    if not loaded:
        return failed
    waves = [wave for _, wave, _ in loaded]
    rates = [rate for _, _, rate in loaded]
    generated = [record.generated_caption for record, _, _ in loaded]
    if captioner is not None:
        todo = [i for i, text in enumerate(generated) if regenerate or not _present(text)]
        if todo:
            fresh = captioner.caption([waves[i] for i in todo], [rates[i] for i in todo])
            for i, text in zip(todo, fresh, strict=True):
                generated[i] = text
    audio_embeddings = clap.embed_audio(waves, rates)
    originals = [record.original_caption for record, _, _ in loaded]
    texts = [t for t in originals + generated if _present(t)]
    text_embeddings = dict(zip(texts, clap.embed_text(texts), strict=True)) if texts else {}
    updated = []
    for i, (record, _, _) in enumerate(loaded):
        scores = {}
        if _present(generated[i]):
            scores["generated_audio"] = float(audio_embeddings[i] @ text_embeddings[generated[i]])
        if _present(originals[i]):
            scores["original_audio"] = float(audio_embeddings[i] @ text_embeddings[originals[i]])
        if _present(generated[i]) and _present(originals[i]):
            scores["original_generated"] = float(
                text_embeddings[originals[i]] @ text_embeddings[generated[i]]
            )
        errors = {k: v for k, v in record.errors.items() if k != ERROR_KEY}
        updated.append(
            record.replace(
                generated_caption=generated[i],
                clap={**record.clap, **{k: round(v, 5) for k, v in scores.items()}},
                errors=errors,
            )
        )
    return updated + failed


def score_manifest(
    manifest: str | os.PathLike,
    clap,
    captioner=None,
    batch_size: int = 16,
    regenerate: bool = False,
    progress: bool = True,
    resume_anyway: bool = False,
    min_seconds: float = MIN_CLIP_SECONDS,
) -> dict[str, Any]:
    """Stage 1: generated captions and CLAP scores for every row not yet scored.

    A row counts as scored when its ``clap`` holds the scores its captions allow. Under
    ``torchrun`` / ``accelerate launch`` each process scores one shard; the main process
    merges them. The run is a :class:`~qamdt.manifest.stage_state.StageRun` owning
    ``generated_caption``, ``clap`` and ``errors.captions``; it resumes only from shards
    written with the same CLAP scorer, captioner and settings (or with ``resume_anyway``).

    Returns:
        Counts of rows scored, failed and skipped.
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    settings = {"regenerate": regenerate, "min_seconds": min_seconds}
    model = content_hash(clap, captioner)
    with StageRun(manifest, STAGE, FIELDS, model, settings, state, resume_anyway) as run:
        return _score_rows(
            run, state, clap, captioner, batch_size, regenerate, progress, min_seconds
        )


def _score_rows(run, state, clap, captioner, batch_size, regenerate, progress, min_seconds):
    from tqdm import tqdm

    manifest = run.manifest
    records = read_manifest(manifest)

    def needs_work(record: ClipRecord) -> bool:
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

    todo = [r for r in records if needs_work(r) and r.id not in run.resumed_ids]
    mine = shard_records(todo, state.num_processes, state.process_index)
    scored = failed = 0
    with run.appender() as appender:
        pending = [r for r in mine if r.id not in appender]
        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), unit="clip",
                   desc="captions", disable=not progress or not state.is_local_main_process,
                   file=sys.stderr)  # fmt: skip
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            rows = _score_batch(batch, manifest.parent, clap, captioner, regenerate, min_seconds)
            for record in rows:
                appender.append(record)
                failed += ERROR_KEY in record.errors
                scored += ERROR_KEY not in record.errors
            bar.update(len(batch))
        bar.close()
    run.merge()
    return {"scored": scored, "failed": failed, "skipped": len(records) - len(todo)}


def resolve_thresholds(records: list[ClipRecord], settings: RefineSettings) -> dict[str, float]:
    """Numeric rho1..rho3: absolute values as given, percentiles over the rows' scores."""
    sources = {"rho1": "generated_audio", "rho2": "original_audio", "rho3": "original_generated"}
    resolved = {}
    for name, key in sources.items():
        mode, value = parse_threshold(getattr(settings, name), name)
        if mode == "absolute":
            resolved[name] = value
            continue
        scores = np.array([r.clap[key] for r in records if key in r.clap], dtype=np.float64)
        if scores.size == 0:
            raise QamdtError(f"{name}: no '{key}' scores to take the {value}th percentile of")
        resolved[name] = float(np.percentile(scores, value))
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

    Returns:
        The summary: thresholds, the share of generated captions filtered (eq. 8), of
        original captions dropped (eq. 9), of clips merged (eq. 10), and counts per branch.
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
        manifest, clap, captioner, batch_size, regenerate, progress, resume_anyway, min_seconds
    )
    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        return {"stage1": stage1}
    with manifest_lock(manifest):
        return _choose_captions(manifest, merger, settings, batch_size, stage1)


def _choose_captions(manifest: Path, merger, settings, batch_size: int, stage1: dict) -> dict:
    """Stage 2 over the whole manifest (under its lock)."""
    records = read_manifest(manifest)
    scored = [r for r in records if ERROR_KEY not in r.errors]
    thresholds = resolve_thresholds(scored, settings)
    branches = {r.id: choose_branch(r, thresholds) for r in scored}
    to_merge = [r for r in scored if branches[r.id] == "merged"]
    merged_text: dict[str, str] = {}
    for start in range(0, len(to_merge), batch_size):
        chunk = to_merge[start : start + batch_size]
        texts = merger.merge(
            [r.original_caption for r in chunk], [r.generated_caption for r in chunk]
        )
        merged_text.update(zip((r.id for r in chunk), texts, strict=True))

    out = []
    for record in records:
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
    write_manifest(manifest, out, keep_absolute=True)
    return {"stage1": stage1, **summarize_refinement(out, thresholds)}


def summarize_refinement(records: list[ClipRecord], thresholds: dict[str, float]) -> dict:
    """Shares filtered and fused, as the paper reports them (8.9% and 15.1%)."""
    refined = [r for r in records if "refine" in r.meta]
    with_generated = [r for r in refined if "generated_audio" in r.clap]
    with_original = [r for r in refined if _present(r.original_caption)]
    counts = {b: sum(r.meta["refine"]["branch"] == b for r in refined) for b in BRANCHES}
    filtered_g = sum(r.clap["generated_audio"] <= thresholds["rho1"] for r in with_generated)
    dropped_o = sum(r.clap["original_audio"] <= thresholds["rho2"] for r in with_original)
    total = max(len(refined), 1)
    return {
        "rows": len(records),
        "refined": len(refined),
        "failed": len(records) - len(refined),
        "thresholds": {k: round(v, 5) for k, v in thresholds.items()},
        "branches": counts,
        "generated_filtered_share": round(filtered_g / max(len(with_generated), 1), 4),
        "original_dropped_share": round(dropped_o / max(len(with_original), 1), 4),
        "merged_share": round(counts["merged"] / total, 4),
    }


def load_refine_settings(values: dict[str, Any] | None) -> RefineSettings:
    """``RefineSettings`` from a mapping, naming unknown keys."""
    return dataclass_from_dict(
        RefineSettings, dict(values or {}), "refinement settings", noun="refinement setting"
    )

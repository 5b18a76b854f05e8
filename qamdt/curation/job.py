"""``qamdt curate``: from a manifest of songs to a labelled, captioned, selected manifest.

The job composes the stages, each resumable on its own:

1. the input manifest is copied into ``OUT/manifest.jsonl`` (streamed; audio paths keep
   pointing at the same files) and ``OUT/curation.json`` records the settings and the
   models' content hashes; a second run with other models or settings is refused;
2. part files left by ``--shard`` runs are merged in (``qamdt.manifest.parts``);
3. p-MOS labelling (:func:`mos_predictor.label.label_manifest`);
4. caption scoring, stage 1 of refinement (:func:`captioning.refine.score_manifest`);
   with ``--shard I/N`` the job stops here, each part in its own part file;
5. quality statistics fitted on the p-MOS (or loaded with ``--stats``), levels and
   prefixes written into the rows, ``OUT/quality_stats.json`` saved;
6. final captions, stage 2 of refinement;
7. ``OUT/selected.jsonl``: the rows every ``--select`` expression accepts;
8. ``OUT/report.html`` (:mod:`qamdt.curation.report`).

A killed job run again with the same command finishes with the same files: steps 3-4 go
on from their shards, and steps 5-8 are recomputed from the rows (they are deterministic).
Every step streams the manifest; the statistics fit keeps one number per labelled row.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qamdt.curation.select import Selection
from qamdt.curation.settings import SETTINGS_NAME, CurationSettings
from qamdt.errors import ConfigError
from qamdt.json_files import read_json_object, write_json
from qamdt.manifest import ClipRecord, iter_manifest, write_manifest
from qamdt.manifest.parts import merge_parts
from qamdt.manifest.stage_state import (
    StageBusyError,
    content_hash,
    manifest_lock,
    real_manifest,
    shard_state_path,
)
from qamdt.quality import QUALITY_STATS_NAME

CURATED_NAME = "manifest.jsonl"
SELECTED_NAME = "selected.jsonl"
LOCK_WAIT_SECONDS = 600.0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_models(settings: CurationSettings) -> dict[str, Any]:
    """The MOS model, CLAP scorer, captioner and merger the settings name (None if not)."""
    from mos_predictor.models import load_mos_model

    models: dict[str, Any] = {"mos": load_mos_model(settings.mos), "clap": None}
    models["captioner"] = models["merger"] = None
    if settings.clap is not None:
        from captioning.base import load_captioner, load_clap
        from captioning.merge import build_merger

        models["clap"] = load_clap(settings.clap)
        if settings.captioner is not None:
            models["captioner"] = load_captioner(settings.captioner)
        models["merger"] = build_merger(settings.merger, settings.llm_model)
    return models


def curate(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    settings: CurationSettings,
    models: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs the curation job (see the module docstring).

    Args:
        manifest: The input manifest (``qamdt manifest create``); it is not changed.
        out: The output folder.
        settings: The job's settings.
        models: Loaded models (:func:`load_models`; loaded from the settings when None).
        progress: Show progress bars.
        log: Where messages go.

    Returns:
        The summary of every step (also kept in ``OUT/curation.json``).

    Raises:
        QamdtError: Bad input (naming the file, line and field), an output folder of
            another job, parts of a ``--shard`` run not all finished.
    """
    import torch
    from accelerate import PartialState

    from captioning.refine import choose_final_captions, score_manifest
    from mos_predictor.label import label_manifest

    log = log or _stderr
    state = PartialState(cpu=not torch.cuda.is_available())
    models = models or load_models(settings)
    out = Path(out)
    curated = out / CURATED_NAME
    refiners = None if models["clap"] is None else (models["clap"], models["captioner"])
    hashes = {
        "mos": content_hash(models["mos"]),
        "captions": None if refiners is None else content_hash(*refiners),
    }
    if state.is_main_process:
        _waiting(lambda: _start(manifest, out, settings, hashes), log)
        if settings.part is None:
            _merge_parts_left(curated, log)
    state.wait_for_everyone()
    common = {
        "batch_size": settings.batch_size,
        "progress": progress,
        "resume_anyway": settings.resume_anyway,
        "min_seconds": settings.min_seconds,
        "workers": settings.workers,
        "part": settings.part,
    }
    summary: dict[str, Any] = {"label": label_manifest(curated, models["mos"], **common)}
    if models["clap"] is not None:
        summary["captions"] = score_manifest(
            curated, models["clap"], models["captioner"], **common
        )  # fmt: skip
    if not state.is_main_process:
        return summary
    if settings.part is not None:
        i, n = settings.part
        summary["next"] = (
            f"part {i}/{n} done; when every part is, run the same command without --shard "
            "(it merges the parts, then fits the statistics, chooses captions and reports)"
        )
        _waiting(lambda: _record(out, f"part {i}/{n}", summary), log)
        return summary
    summary["quality"] = apply_quality(curated, settings, out / QUALITY_STATS_NAME)
    if models["clap"] is not None:
        summary["refine"] = choose_final_captions(
            curated, models["merger"], settings.refine_settings(), settings.batch_size
        )
    summary["selected"] = write_selected(curated, out / SELECTED_NAME, settings.select)
    from qamdt.curation.report import write_report

    summary["report"] = str(write_report(curated, out, settings, summary))
    _record(out, "run", summary)
    return summary


def _waiting(step: Callable[[], Any], log: Callable[[str], None]) -> Any:
    """Runs a short step that takes OUT's lock, waiting while another part holds it."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    told = False
    while True:
        try:
            return step()
        except StageBusyError as error:
            if time.monotonic() > deadline:
                raise
            if not told:
                log(f"waiting for the lock: {error}")
                told = True
            time.sleep(0.5)


def _start(manifest: str | os.PathLike, out: Path, settings: CurationSettings, hashes) -> None:
    """Checks OUT against the job, copies the input manifest into it on the first run."""
    source = real_manifest(manifest)
    out.mkdir(parents=True, exist_ok=True)
    curated = out / CURATED_NAME
    sidecar = out / SETTINGS_NAME
    job = {
        "input": str(source),
        "result_settings": settings.result_settings(),
        "models": hashes,
    }
    with manifest_lock(curated):
        if sidecar.is_file() and curated.is_file():
            found = read_json_object(sidecar)
            differs = [k for k in job if found.get(k) != job[k]]
            if differs:
                what = _differences(found, job)
                raise ConfigError(
                    f"{out}: holds a curation of other {' and '.join(differs)} ({what}); "
                    "give another --out, or delete the folder to start again"
                )
            write_json(sidecar, {**found, "settings": settings.to_dict()})
            return
        write_manifest(curated, iter_manifest(source), source_dir=source.parent, keep_absolute=True)
        write_json(sidecar, {**job, "settings": settings.to_dict(), "steps": {}})


def _differences(found: dict[str, Any], job: dict[str, Any]) -> str:
    parts = []
    for key in job:
        old, new = found.get(key), job[key]
        if isinstance(old, dict) and isinstance(new, dict):
            names = [k for k in new if old.get(k) != new[k]]
            parts.extend(f"{k}: {old.get(k)!r} then, {new[k]!r} now" for k in names)
        elif old != new:
            parts.append(f"{key}: {old!r} then, {new!r} now")
    return "; ".join(parts)


def _record(out: Path, key: str, summary: dict[str, Any]) -> None:
    """Keeps a step's summary in the sidecar (under OUT's lock: parts write it too)."""
    with manifest_lock(out / CURATED_NAME):
        values = read_json_object(out / SETTINGS_NAME)
        values.setdefault("steps", {})[key] = summary
        write_json(out / SETTINGS_NAME, values)


def _merge_parts_left(curated: Path, log: Callable[[str], None]) -> None:
    """Merges the part files of ``--shard`` runs into the curated manifest, then removes them."""
    pattern = re.compile(re.escape(curated.stem) + r"\.[\w]+-part\d+of\d+\.jsonl")
    parts = sorted(p for p in curated.parent.iterdir() if pattern.fullmatch(p.name))
    if not parts:
        return
    merged = merge_parts(parts, curated, curated, log)
    for part in parts:
        part.unlink()
        shard_state_path(part).unlink(missing_ok=True)
    log(f"{curated}: merged {len(parts)} part files ({', '.join(merged)})")


def apply_quality(manifest: Path, settings: CurationSettings, stats_path: Path) -> dict[str, Any]:
    """Quality statistics (fitted, or ``settings.stats``), levels and prefixes in the rows.

    Args:
        manifest: The labelled manifest, updated in place under its lock.
        settings: The job's settings (``stats``, ``level_rule``, ``prefix_sigmas``).
        stats_path: Where the statistics used are saved.

    Returns:
        Whether they were fitted, mu, sigma, level edges, and level and prefix counts.
    """
    from mos_predictor.stats import label_manifest_with_scores

    fitted = settings.stats is None
    fit = {"level_rule": settings.level_rule, "prefix_sigmas": settings.prefix_sigmas}
    with manifest_lock(manifest):
        stats, scores, _ = label_manifest_with_scores(
            manifest, None, settings.stats, fit if fitted else {}
        )
        stats.save(stats_path)
        levels = stats.count_labels(scores)[0] if scores.size else dict.fromkeys(range(1, 6), 0)
    return {
        "fitted": fitted,
        "mu": stats.mu,
        "sigma": stats.sigma,
        "level_rule": stats.level_rule,
        "level_edges": list(stats.level_edges),
        "prefix_thresholds": list(stats.prefix_thresholds),
        "level_counts": levels,
        "stats": str(stats_path),
    }


def write_selected(manifest: Path, out: Path, expressions) -> dict[str, Any] | None:
    """``out``: the rows of ``manifest`` that every expression accepts (None: no --select)."""
    selection = Selection.parse(expressions)
    if not selection:
        out.unlink(missing_ok=True)
        return None
    counts = {"rows": 0, "selected": 0}

    def rows() -> Iterator[ClipRecord]:
        for record in iter_manifest(manifest, validate=False):
            counts["rows"] += 1
            if selection.matches(record):
                counts["selected"] += 1
                yield record

    write_manifest(out, rows(), source_dir=manifest.parent, keep_absolute=True)
    return {"manifest": str(out), "select": list(expressions), **counts}

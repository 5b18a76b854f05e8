"""The demo's stages in order; the generation, evaluation and report stages are here.

Everything lands in the run folder ``OUT``::

    stages.json            what ran, for how long, and what it returned
    corpus/                the embedded corpus; its manifest collects p-MOS, levels,
                           prefixes and refined captions as the stages run
    work/                  training runs (checkpoints, logs, latent caches)
    models/                mos (labels the corpus), judge (scores generated audio),
                           captioner, clap, vae, pipeline (quality-aware MDT),
                           pipeline-mdt (the baseline without quality conditioning)
    generated/             qa-mdt (every level, the level in each sidecar), mdt,
                           mdt-negative-prompt
    editing/               a long piece, a continuation, an inpainted clip and
                           audio-to-audio of degraded clips, with editing.json
    evaluation/            the scores of each generated folder and the pitch check
    report/                report.html and report.json
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qamdt.demo.common import is_clean, judge_model, manifest_path, read_records
from qamdt.demo.data_stages import (
    captioner,
    clap,
    clear_captions,
    clear_pmos,
    corpus,
    judge,
    mos,
    pmos,
    refine,
)
from qamdt.demo.editing import edit
from qamdt.demo.model_stages import cache, mdt, mdt_baseline, vae
from qamdt.demo.settings import DemoSettings
from qamdt.demo.stages import Stage, StageContext, StageState, run_stages
from qamdt.json_files import write_json

SWEEP = "qa-mdt"
PLAIN = "mdt"
NEGATIVE = "mdt-negative-prompt"


# ------------------------------------------------------------------------------ stages


def choose_prompts(records, count: int, split: str = "test") -> list[dict[str, Any]]:
    """The evaluation prompts: true captions of clean clips of ``split``, then of others.

    Clean clips of the split come first; a corpus too small to hold ``count`` of them
    lends the split's clips with degradations, then clips of other splits.

    Returns:
        ``{"reference_id", "prompt", "clean_test"}`` per prompt (``clean_test``: the clip
        is a clean one of ``split``).
    """
    ranked = sorted(
        records, key=lambda r: (not (r.split == split and is_clean(r)), r.split != split)
    )
    chosen = []
    for record in ranked:
        prompt = record.meta.get("true_caption") or record.final_caption
        if prompt and prompt not in {c["prompt"] for c in chosen}:
            clean_test = record.split == split and is_clean(record)
            chosen.append({"reference_id": record.id, "prompt": prompt, "clean_test": clean_test})
        if len(chosen) == count:
            break
    return chosen


def generate(ctx: StageContext) -> dict[str, Any]:
    """Generates the prompts at every level, and with both baselines, at the same seeds."""
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.generation.writer import generate_to_folder

    s = ctx.settings
    chosen = choose_prompts(read_records(ctx.out), s.prompts)
    prompts = [c["prompt"] for c in chosen]
    extra = [{"reference_id": c["reference_id"]} for c in chosen]
    folder = ctx.out / "generated"
    runs = [("pipeline", SWEEP, s.level_settings(level), f"level{level}_") for level in s.levels]
    for name, negative in ((PLAIN, ""), (NEGATIVE, s.negative_prompt)):
        runs.append(("pipeline-mdt", name, s.baseline_settings(negative), ""))
    pipelines: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for model_name, name, settings, prefix in runs:
        model = ctx.out / "models" / model_name
        if model_name not in pipelines:
            pipelines[model_name] = QAMDTPipeline.from_pretrained(
                model, torch_dtype=s.pipeline_dtypes()
            )
        files = generate_to_folder(
            pipelines[model_name],
            prompts,
            settings,
            folder / name,
            batch_size=s.generate_batch_size,
            name_prefix=prefix,
            extra=extra,
            model=model,
        )
        counts[name] = counts.get(name, 0) + len(files)
        ctx.log(f"demo: generated {len(files)} clips into {folder / name}")
    return {"prompts": chosen, "clips": counts, "folder": str(folder)}


def _reference_filter(records) -> str:
    """The reference filter: "clean" test clips when there are two of them, else "all"."""
    clean = sum(r.split == "test" and is_clean(r) for r in records)
    return "clean" if clean >= 2 else "all"


def _level5_waves(folder: Path, levels: Sequence[int]) -> tuple[list, int]:
    from qamdt.audio_io import load_audio
    from qamdt.generation.sidecar import read_sidecar

    top = max(levels)
    waves, rate = [], 0
    for sidecar in sorted(folder.glob("*.json")):
        if read_sidecar(sidecar).settings.quality_level == top:
            wave, rate = load_audio(sidecar.with_suffix(".wav"), allow_silent=True)
            waves.append(wave)
    return waves, rate


def evaluate(ctx: StageContext) -> dict[str, Any]:
    """Scores the sweep and both baselines with the judge; checks that the top level is music.

    Also scores held-out clips of the lowest and highest level before and after a round
    trip through the pipeline's VAE and vocoder: the p-MOS a perfect generator would reach.
    """
    from captioning.base import load_captioner, load_clap
    from mos_predictor.models import load_mos_model
    from qamdt.demo.decoder_reference import decoder_reference
    from qamdt.demo.pitch import music_vs_noise
    from qamdt.evaluation.evaluate import evaluate_generated
    from qamdt.generation.pipeline import QAMDTPipeline

    s = ctx.settings
    models = ctx.out / "models"
    judge = judge_model(ctx.out, s)
    scorers = {
        "mos_model": load_mos_model(judge),
        "clap": load_clap(models / "clap"),
        "captioner": load_captioner(models / "captioner"),
    }
    reference_filter = _reference_filter(read_records(ctx.out))
    folder = ctx.out / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"judge": str(judge), "reference_filter": reference_filter}
    for name in (SWEEP, PLAIN, NEGATIVE):
        results = evaluate_generated(
            ctx.out / "generated" / name,
            manifest_path(ctx.out),
            **scorers,
            split="test",
            reference_filter=reference_filter,
            batch_size=s.eval_batch_size,
            seed=s.seed,
            examples_per_level=s.examples_per_level,
        )
        write_json(folder / f"{name}.json", results)
        overall = results["overall"]
        summary[name] = {"pmos_mean": overall["pmos_mean"], "frechet": overall["frechet"],
                         "clap": overall["clap"]}  # fmt: skip
    waves, rate = _level5_waves(ctx.out / "generated" / SWEEP, s.levels)
    pitch = music_vs_noise(
        waves, rate, s.pitch_fmin, s.pitch_fmax, s.pitch_envelope_hz, seed=s.seed
    )
    pitch = {"level": max(s.levels), **pitch}
    write_json(folder / "pitch.json", pitch)
    reference = decoder_reference(
        QAMDTPipeline.from_pretrained(models / "pipeline", torch_dtype=s.pipeline_dtypes()),
        scorers["mos_model"],
        read_records(ctx.out),
        manifest_path(ctx.out).parent,
        (min(s.levels), max(s.levels)),
        s.decoder_reference_clips,
        s.audio_seconds,
    )
    write_json(folder / "decoder_reference.json", reference)
    return {**summary, "pitch": pitch, "decoder_reference": reference}


def report(ctx: StageContext) -> dict[str, Any]:
    """Writes ``OUT/report`` (HTML and JSON) with the figures and pass/fail checks."""
    from qamdt.demo.summary import demo_results
    from qamdt.evaluation.report import write_report

    folder = ctx.out / "evaluation"
    evaluations = {
        name: json.loads((folder / f"{name}.json").read_text()) for name in (SWEEP, PLAIN, NEGATIVE)
    }
    pitch = json.loads((folder / "pitch.json").read_text())
    decoder = json.loads((folder / "decoder_reference.json").read_text())
    seconds = {name: ctx.seconds[name] for name in STAGE_NAMES if name in ctx.seconds}
    results = demo_results(
        evaluations,
        pitch,
        seconds,
        ctx.wall_seconds,
        ctx.results,
        ctx.settings,
        (SWEEP, PLAIN, NEGATIVE),
        decoder,
    )
    page = write_report(results, ctx.out / "report")
    return {
        "report": str(page),
        "json": str(page.with_name("report.json")),
        "checks": {c["check"]: c["passed"] for c in results["checks"]},
    }


# ---------------------------------------------------------------------------- pipeline

STAGES: tuple[Stage, ...] = (
    Stage("corpus", corpus, outputs=("corpus",)),
    # Small trainings and labelling side by side, the longest first; then the two MDTs
    # (run_stages, stage_processes). Generation, editing and evaluation run alone on every
    # thread: their convolutions and batched sampling use two threads well, and on one
    # thread beside each other they took longer than one after the other (docs/speed.md).
    Stage("vae", vae, ("corpus",), ("work/vae", "models/vae"), concurrent=True),
    Stage("mos", mos, ("corpus",), ("work/mos", "models/mos"), concurrent=True),
    Stage("judge", judge, ("corpus",), ("work/judge", "models/judge"), concurrent=True),
    Stage("clap", clap, ("corpus",), ("models/clap",), concurrent=True),
    Stage("captioner", captioner, ("corpus",), ("models/captioner",), concurrent=True),
    Stage("pmos", pmos, ("mos",), reset=clear_pmos, concurrent=True),
    # After pmos too: both rewrite the corpus manifest, so they must not run at once.
    Stage("refine", refine, ("captioner", "clap", "pmos"), reset=clear_captions, concurrent=True),
    Stage("cache", cache, ("pmos", "refine", "vae"), ("work/cache-mdt", "work/cache-mdt-baseline")),
    Stage("mdt", mdt, ("cache",), ("work/mdt", "models/pipeline"), concurrent=True),
    Stage(
        "mdt-baseline",
        mdt_baseline,
        ("cache",),
        ("work/mdt-baseline", "models/pipeline-mdt"),
        concurrent=True,
    ),
    Stage("generate", generate, ("mdt", "mdt-baseline"), ("generated",)),
    Stage("edit", edit, ("generate", "judge", "clap"), ("editing",)),
    Stage("evaluate", evaluate, ("generate", "judge", "clap", "captioner"), ("evaluation",)),
    Stage("report", report, ("evaluate", "edit"), ("report",)),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def run_demo(out: str | Path, settings: DemoSettings, **options: Any) -> StageState:
    """Runs the demo's :data:`STAGES`, ``settings.stage_processes`` side by side.

    ``options`` (``only``, ``redo``, ``log``) and the return value are those of
    :func:`qamdt.demo.stages.run_stages`.
    """
    return run_stages(STAGES, out, settings, processes=settings.stage_processes, **options)

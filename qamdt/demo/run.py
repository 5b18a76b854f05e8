"""The demo's stages, one function each, and the pipeline that orders them.

Everything lands in the run folder ``OUT``::

    stages.json            what ran, for how long, and what it returned
    corpus/                the embedded corpus; its manifest collects p-MOS, levels,
                           prefixes and refined captions as the stages run
    work/                  training runs (checkpoints, logs, latent caches)
    models/                mos, captioner, clap, vae, pipeline (quality-aware MDT),
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
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.demo.editing import edit
from qamdt.demo.settings import DemoSettings
from qamdt.demo.stages import Stage, StageContext, StageState, run_stages
from qamdt.errors import QamdtError
from qamdt.json_files import write_json

MANIFEST = "corpus/manifest.jsonl"
SWEEP = "qa-mdt"
PLAIN = "mdt"
NEGATIVE = "mdt-negative-prompt"
# Fewer validation clips than this give no usable rank correlation to select the MOS
# model by, so a tiny corpus validates on its training split instead.
MIN_VALID_CLIPS = 3


def _manifest(out: Path) -> Path:
    return out / MANIFEST


def _records(out: Path):
    from qamdt.manifest import read_manifest

    return read_manifest(_manifest(out))


def _copy_tree(source: Path, target: Path) -> None:
    """Replaces ``target`` with a copy of ``source``."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)


def _split_counts(records) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.split] = counts.get(record.split, 0) + 1
    return counts


def _is_clean(record) -> bool:
    return record.meta.get("degradations") == []


def _rewrite_manifest(out: Path, change: Callable[[Any], Any]) -> None:
    from qamdt.manifest import write_manifest

    manifest = _manifest(out)
    if manifest.is_file():
        write_manifest(manifest, [change(r) for r in _records(out)])


# ------------------------------------------------------------------------------ stages


def corpus(ctx: StageContext) -> dict[str, Any]:
    """Builds (or resumes) the embedded corpus in ``OUT/corpus`` and describes it."""
    from qamdt.corpus.build import CorpusConfig, build_corpus
    from qamdt.corpus.describe import describe_corpus

    s = ctx.settings
    config = CorpusConfig(
        clips=s.clips,
        seed=s.seed,
        variants_per_piece=s.variants_per_piece,
        max_clips_per_variant=s.max_clips_per_variant,
    )
    manifest = build_corpus(ctx.out / "corpus", config)
    description, _ = describe_corpus(ctx.out / "corpus")
    records = _records(ctx.out)
    return {
        "manifest": str(manifest),
        "description": str(description),
        "clips": len(records),
        "splits": _split_counts(records),
        "clean_test_clips": sum(r.split == "test" and _is_clean(r) for r in records),
    }


def mos(ctx: StageContext) -> dict[str, Any]:
    """Trains the MOS predictor (``mos_config``: the corpus alone); keeps the best epoch."""
    from mos_predictor.train import MODEL_DIR, load_train_config, train_mos_model

    s = ctx.settings
    valid = _split_counts(_records(ctx.out)).get("valid", 0)
    valid_split = "valid" if valid >= MIN_VALID_CLIPS else "train"
    config = load_train_config(
        s.resolve_path(s.mos_config),
        data=f"corpus:{_manifest(ctx.out)}",
        valid_split=valid_split,
        epochs=s.mos_epochs,
        batch_size=s.mos_batch_size,
        max_minutes=s.mos_max_minutes,
        patience=s.mos_patience,
        real_files_per_source=s.mos_real_files_per_source,
        seed=s.seed,
    )
    work = ctx.out / "work" / "mos"
    summary = train_mos_model(config, work)
    if not (work / MODEL_DIR).is_dir():
        raise QamdtError(
            f"{work}: no epoch gave a finite validation SRCC, so no model was kept; "
            "train longer (mos_epochs) or on more clips"
        )
    _copy_tree(work / MODEL_DIR, ctx.out / "models" / "mos")
    return {**summary, "valid_split": valid_split, "model": str(ctx.out / "models" / "mos")}


def _clear_pmos(out: Path) -> None:
    _rewrite_manifest(out, lambda r: r.replace(pmos=None, quality_level=None, quality_prefix=None))


def pmos(ctx: StageContext) -> dict[str, Any]:
    """Labels every clip with p-MOS, fits the statistics and writes levels and prefixes."""
    from mos_predictor.label import label_manifest
    from mos_predictor.models import load_mos_model
    from mos_predictor.stats import run_stats

    manifest = _manifest(ctx.out)
    labelled = label_manifest(manifest, load_mos_model(ctx.out / "models" / "mos"))
    # Quantile levels, not the released five-bin rule: the corpus's p-MOS is not
    # bell-shaped (a quarter of the clips is clean, the rest spread over the scale), so
    # the bins beyond mu -/+ 2 sigma, levels 1 and 5, stay (nearly) empty; equal shares
    # give every level the same number of training clips.
    shares = list(ctx.settings.level_shares)
    scores = np.array([r.pmos for r in _records(ctx.out) if r.pmos is not None])
    edges = np.quantile(scores, np.cumsum(shares)[:4])
    # Prefixes on the level edges, so that levels 1-2 read "low quality", 3 "medium" and
    # 4-5 "high", as the paper's thresholds (mu -/+ 1.25 sigma against bins of one sigma)
    # roughly give; the default mu -/+ 1.25 sigma would label most of levels 1 and 4
    # "medium" on quintile levels, and generation uses each level's commonest prefix.
    prefixes = (float(np.nextafter(edges[1], -np.inf)), float(edges[2]))
    stats = run_stats(
        manifest, level_rule="quantile", level_shares=shares, prefix_thresholds=prefixes
    )
    return {"label": labelled, "stats": stats}


def captioner(ctx: StageContext) -> dict[str, Any]:
    """Trains the embedded captioner into ``OUT/models/captioner``."""
    from captioning.train_captioner import train_embedded_captioner

    s = ctx.settings
    return train_embedded_captioner(
        _manifest(ctx.out),
        ctx.out / "models" / "captioner",
        epochs=s.captioner_epochs,
        batch_size=s.captioner_batch_size,
        seed=s.seed,
        max_minutes=s.captioner_max_minutes,
        log=ctx.log,
    )


def clap(ctx: StageContext) -> dict[str, Any]:
    """Trains the embedded CLAP scorer into ``OUT/models/clap``."""
    from captioning.train_clap import train_embedded_clap

    s = ctx.settings
    return train_embedded_clap(
        _manifest(ctx.out),
        ctx.out / "models" / "clap",
        epochs=s.clap_epochs,
        batch_size=s.clap_batch_size,
        seed=s.seed,
        max_minutes=s.clap_max_minutes,
        resume=True,
        log=ctx.log,
    )


def _clear_captions(out: Path) -> None:
    def clear(record):
        meta = {k: v for k, v in record.meta.items() if k != "refine"}
        errors = {k: v for k, v in record.errors.items() if k != "captions"}
        return record.replace(generated_caption=None, final_caption=None, caption_source=None,
                              clap={}, meta=meta, errors=errors)  # fmt: skip

    _rewrite_manifest(out, clear)


def refine(ctx: StageContext) -> dict[str, Any]:
    """Captions every clip, CLAP-scores both captions and chooses or merges (eqs. 8-10)."""
    from captioning.base import load_captioner, load_clap
    from captioning.merge import RuleMerger
    from captioning.refine import RefineSettings, refine_manifest

    s = ctx.settings
    models = ctx.out / "models"
    # Percentile thresholds (docs/captions.md): the paper's absolute values belong to
    # LAION-CLAP's similarity scale, not to the scorer trained here.
    settings = RefineSettings(rho1=s.refine_rho1, rho2=s.refine_rho2, rho3=s.refine_rho3)
    return refine_manifest(
        _manifest(ctx.out),
        load_clap(models / "clap"),
        load_captioner(models / "captioner"),
        RuleMerger(),
        settings,
    )


def vae(ctx: StageContext) -> dict[str, Any]:
    """Trains the mel VAE; its model goes to ``OUT/models/vae``."""
    from qamdt.training.vae_train import MODEL_DIR, load_vae_config, train_vae

    s = ctx.settings
    config = load_vae_config(
        None,
        manifest=str(_manifest(ctx.out)),
        steps=s.vae_steps,
        batch_size=s.vae_batch_size,
        max_minutes=s.vae_max_minutes,
        seed=s.seed,
    )
    work = ctx.out / "work" / "vae"
    summary = train_vae(config, work)
    _copy_tree(work / MODEL_DIR, ctx.out / "models" / "vae")
    return summary


def _train_mdt(
    ctx: StageContext, name: str, pipeline_name: str, quality: bool, steps: int | None = None
) -> dict[str, Any]:
    """Caches latents and trains one MDT; its pipeline goes to ``OUT/models/<pipeline>``.

    ``steps`` fixes the step count with no time cap; by default the settings' steps and
    minutes apply.
    """
    from qamdt.training.latent_cache import build_cache
    from qamdt.training.mdt_config import load_mdt_config, read_yaml
    from qamdt.training.mdt_data import training_clips
    from qamdt.training.mdt_train import PIPELINE_DIR, train_mdt

    s = ctx.settings
    preset = s.resolve_path(s.mdt_config)
    model = {**(read_yaml(preset).get("model") or {}), **s.mdt_model}
    # The preset's sample_size is a whole clip's latent; the trainer sets the excerpt's.
    model.pop("sample_size", None)
    manifest = _manifest(ctx.out)
    usable, _ = training_clips(manifest, "train", quality, quality)
    cache = ctx.out / "work" / f"cache-{name}"
    config = load_mdt_config(
        preset,
        manifest=str(manifest),
        vae=str(ctx.out / "models" / "vae"),
        cache=str(cache),
        model=model,
        conditioning={"quality_token": quality, "quality_prefix": quality},
        clip_seconds=s.mdt_clip_seconds,
        batch_size=min(s.mdt_batch_size, len(usable)),
        learning_rate=s.mdt_learning_rate,
        warmup_steps=s.mdt_warmup_steps,
        max_steps=steps or s.mdt_max_steps,
        max_minutes=None if steps else s.mdt_max_minutes,
        checkpoint_every=s.mdt_checkpoint_every,
        seed=s.seed,
    )
    started = time.monotonic()
    # The baseline's clips, audio and VAE are the quality model's: only captions differ.
    shared = ctx.out / "work" / "cache-mdt" if name != "mdt" else None
    cached = build_cache(config, cache, latents_from=shared)
    cache_seconds = round(time.monotonic() - started, 2)
    work = ctx.out / "work" / name
    summary = train_mdt(config, work)
    _copy_tree(work / PIPELINE_DIR, ctx.out / "models" / pipeline_name)
    return {
        "cache": cached,
        "cache_seconds": cache_seconds,
        "train": summary,
        "pipeline": str(ctx.out / "models" / pipeline_name),
    }


def mdt(ctx: StageContext) -> dict[str, Any]:
    """The quality-aware MDT: quality token and quality prefix."""
    return _train_mdt(ctx, "mdt", "pipeline", quality=True)


def mdt_baseline(ctx: StageContext) -> dict[str, Any]:
    """The plain MDT baseline: same model and budget, no quality conditioning.

    It trains exactly as many steps as the quality model did, also where a slow machine
    stopped that one at its time cap.
    """
    steps = ctx.results["mdt"]["train"]["steps"]
    return _train_mdt(ctx, "mdt-baseline", "pipeline-mdt", quality=False, steps=steps)


def choose_prompts(records, count: int) -> list[dict[str, Any]]:
    """The evaluation prompts: true captions of clean test clips, then of other clips.

    Clean test clips come first; a corpus too small to hold ``count`` of them lends test
    clips with degradations, then clips of other splits.

    Returns:
        ``{"reference_id", "prompt", "clean_test"}`` per prompt.
    """
    ranked = sorted(
        records, key=lambda r: (not (r.split == "test" and _is_clean(r)), r.split != "test")
    )
    chosen = []
    for record in ranked:
        prompt = record.meta.get("true_caption") or record.final_caption
        if prompt and prompt not in {c["prompt"] for c in chosen}:
            clean_test = record.split == "test" and _is_clean(record)
            chosen.append({"reference_id": record.id, "prompt": prompt, "clean_test": clean_test})
        if len(chosen) == count:
            break
    return chosen


def generate(ctx: StageContext) -> dict[str, Any]:
    """Generates the prompts at every level, and with both baselines, at the same seeds."""
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.generation.writer import generate_to_folder

    s = ctx.settings
    chosen = choose_prompts(_records(ctx.out), s.prompts)
    prompts = [c["prompt"] for c in chosen]
    extra = [{"reference_id": c["reference_id"]} for c in chosen]
    folder = ctx.out / "generated"
    common = s.generation_settings()
    runs = []
    for level in s.levels:
        settings = common.replace(
            quality_level=level, negative_quality_level=s.negative_level_for(level)
        )
        runs.append(("pipeline", SWEEP, settings, f"level{level}_"))
    for name, negative in ((PLAIN, ""), (NEGATIVE, s.negative_prompt)):
        settings = common.replace(
            quality_level=None, negative_prompt=negative, guidance="negative-prompt"
        )
        runs.append(("pipeline-mdt", name, settings, ""))
    pipelines: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for model_name, name, settings, prefix in runs:
        model = ctx.out / "models" / model_name
        if model_name not in pipelines:
            pipelines[model_name] = QAMDTPipeline.from_pretrained(model)
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
    clean = sum(r.split == "test" and _is_clean(r) for r in records)
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
    """Scores the sweep and both baselines; checks that the top level is music.

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
    scorers = {
        "mos_model": load_mos_model(models / "mos"),
        "clap": load_clap(models / "clap"),
        "captioner": load_captioner(models / "captioner"),
    }
    reference_filter = _reference_filter(_records(ctx.out))
    folder = ctx.out / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"reference_filter": reference_filter}
    for name in (SWEEP, PLAIN, NEGATIVE):
        results = evaluate_generated(
            ctx.out / "generated" / name,
            _manifest(ctx.out),
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
        QAMDTPipeline.from_pretrained(models / "pipeline"),
        scorers["mos_model"],
        _records(ctx.out),
        _manifest(ctx.out).parent,
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
        evaluations, pitch, seconds, ctx.results, ctx.settings, (SWEEP, PLAIN, NEGATIVE), decoder
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
    Stage("mos", mos, ("corpus",), ("work/mos", "models/mos")),
    Stage("pmos", pmos, ("mos",), reset=_clear_pmos),
    Stage("captioner", captioner, ("corpus",), ("models/captioner",)),
    Stage("clap", clap, ("corpus",), ("models/clap",)),
    Stage("refine", refine, ("captioner", "clap"), reset=_clear_captions),
    Stage("vae", vae, ("corpus",), ("work/vae", "models/vae")),
    Stage(
        "mdt",
        mdt,
        ("pmos", "refine", "vae"),
        ("work/mdt", "work/cache-mdt", "models/pipeline"),
    ),
    Stage(
        "mdt-baseline",
        mdt_baseline,
        ("refine", "vae", "mdt"),
        ("work/mdt-baseline", "work/cache-mdt-baseline", "models/pipeline-mdt"),
    ),
    Stage("generate", generate, ("mdt", "mdt-baseline"), ("generated",)),
    Stage("edit", edit, ("generate", "mos", "clap"), ("editing",)),
    Stage("evaluate", evaluate, ("generate", "mos", "clap", "captioner"), ("evaluation",)),
    Stage("report", report, ("evaluate", "edit"), ("report",)),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def run_demo(out: str | Path, settings: DemoSettings, **options: Any) -> StageState:
    """Runs the demo's :data:`STAGES`.

    ``options`` (``only``, ``redo``, ``log``) and the return value are those of
    :func:`qamdt.demo.stages.run_stages`.
    """
    return run_stages(STAGES, out, settings, **options)

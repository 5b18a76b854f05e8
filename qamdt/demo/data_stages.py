"""The demo's data stages: the corpus, its p-MOS labels and levels, and its captions.

``corpus`` builds the embedded corpus; ``mos`` trains the MOS predictor and ``pmos``
labels every clip and assigns levels and prefixes; ``judge`` trains the p-MOS model that
scores generated audio; ``captioner`` and ``clap`` train the embedded captioner and CLAP
scorer, and ``refine`` refines every clip's caption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qamdt.demo.common import (
    copy_tree,
    is_clean,
    judge_model,
    manifest_path,
    read_records,
    rewrite_manifest,
    split_counts,
)
from qamdt.demo.stages import StageContext
from qamdt.errors import QamdtError

# Fewer validation clips than this give no usable rank correlation to select the MOS
# model by, so a tiny corpus validates on its training split instead.
MIN_VALID_CLIPS = 3


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
    records = read_records(ctx.out)
    return {
        "manifest": str(manifest),
        "description": str(description),
        "clips": len(records),
        "splits": split_counts(records),
        "clean_test_clips": sum(r.split == "test" and is_clean(r) for r in records),
    }


def _train_mos(ctx: StageContext, name: str, mos_config: str, epochs: int) -> dict[str, Any]:
    """Trains a MOS predictor of ``mos_config`` in ``OUT/work/<name>``; keeps the best epoch.

    The model goes to ``OUT/models/<name>``.
    """
    import torch

    from mos_predictor.train import MODEL_DIR, load_train_config, train_mos_model

    s = ctx.settings
    valid = split_counts(read_records(ctx.out)).get("valid", 0)
    valid_split = "valid" if valid >= MIN_VALID_CLIPS else "train"
    config = load_train_config(
        s.resolve_path(mos_config),
        data=f"corpus:{manifest_path(ctx.out)}",
        valid_split=valid_split,
        epochs=epochs,
        batch_size=s.mos_batch_size,
        max_minutes=s.mos_max_minutes,
        patience=s.mos_patience,
        real_files_per_source=s.mos_real_files_per_source,
        # the degraded versions are made on the stage's own share of the cores
        real_workers=torch.get_num_threads(),
        seed=s.seed,
    )
    work = ctx.out / "work" / name
    summary = train_mos_model(config, work)
    if not (work / MODEL_DIR).is_dir():
        raise QamdtError(
            f"{work}: no epoch gave a finite validation SRCC, so no model was kept; "
            f"train longer ({name}_epochs) or on more clips"
        )
    model = ctx.out / "models" / name
    copy_tree(work / MODEL_DIR, model)
    return {**summary, "valid_split": valid_split, "model": str(model)}


def mos(ctx: StageContext) -> dict[str, Any]:
    """Trains the labelling MOS predictor of ``mos_config`` (``OUT/models/mos``)."""
    return _train_mos(ctx, "mos", ctx.settings.mos_config, ctx.settings.mos_epochs)


def judge(ctx: StageContext) -> dict[str, Any]:
    """Trains the judge of ``judge_config`` (``OUT/models/judge``), if it has its own.

    The judge scores generated audio in the edit and evaluate stages: audio that went
    through the VAE and the vocoder, which a model trained on real recordings hears as
    one more damage (docs/mos.md, "The real-music model in the demo").
    """
    s = ctx.settings
    if s.judge_config is None:
        return {"model": str(judge_model(ctx.out, s))}
    return _train_mos(ctx, "judge", s.judge_config, s.judge_epochs)


def clear_pmos(out: Path) -> None:
    """Removes the p-MOS labels (the ``pmos`` stage's reset)."""
    rewrite_manifest(out, lambda r: r.replace(pmos=None, quality_level=None, quality_prefix=None))


def pmos(ctx: StageContext) -> dict[str, Any]:
    """Labels every clip with p-MOS, fits the statistics and writes levels and prefixes."""
    from mos_predictor.label import label_manifest
    from mos_predictor.models import load_mos_model
    from mos_predictor.stats import run_stats

    manifest = manifest_path(ctx.out)
    labelled = label_manifest(manifest, load_mos_model(ctx.out / "models" / "mos"))
    # Quantile levels, not the released five-bin rule: the corpus's p-MOS is not
    # bell-shaped (a quarter of the clips is clean, the rest spread over the scale), so
    # the bins beyond mu -/+ 2 sigma, levels 1 and 5, stay (nearly) empty; equal shares
    # give every level the same number of training clips.
    shares = list(ctx.settings.level_shares)
    scores = np.array([r.pmos for r in read_records(ctx.out) if r.pmos is not None])
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
        manifest_path(ctx.out),
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
        manifest_path(ctx.out),
        ctx.out / "models" / "clap",
        epochs=s.clap_epochs,
        batch_size=s.clap_batch_size,
        seed=s.seed,
        max_minutes=s.clap_max_minutes,
        resume=True,
        log=ctx.log,
    )


def clear_captions(out: Path) -> None:
    """Removes the refined captions (the ``refine`` stage's reset)."""

    def clear(record):
        meta = {k: v for k, v in record.meta.items() if k != "refine"}
        errors = {k: v for k, v in record.errors.items() if k != "captions"}
        return record.replace(generated_caption=None, final_caption=None, caption_source=None,
                              clap={}, meta=meta, errors=errors)  # fmt: skip

    rewrite_manifest(out, clear)


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
        manifest_path(ctx.out),
        load_clap(models / "clap"),
        load_captioner(models / "captioner"),
        RuleMerger(),
        settings,
    )

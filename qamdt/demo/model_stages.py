"""The demo's model stages: the mel VAE, the quality-aware MDT and its plain baseline."""

from __future__ import annotations

import time
from typing import Any

from qamdt.demo.common import copy_tree, manifest_path
from qamdt.demo.stages import StageContext


def vae(ctx: StageContext) -> dict[str, Any]:
    """Trains the mel VAE; its model goes to ``OUT/models/vae``."""
    from qamdt.training.vae_train import MODEL_DIR, load_vae_config, train_vae

    s = ctx.settings
    config = load_vae_config(
        None,
        manifest=str(manifest_path(ctx.out)),
        steps=s.vae_steps,
        batch_size=s.vae_batch_size,
        max_minutes=s.vae_max_minutes,
        seed=s.seed,
    )
    work = ctx.out / "work" / "vae"
    summary = train_vae(config, work)
    copy_tree(work / MODEL_DIR, ctx.out / "models" / "vae")
    return summary


def _mdt_config(ctx: StageContext, name: str, quality: bool):
    """The training settings of one of the two MDTs (``name``: "mdt" or "mdt-baseline")."""
    from qamdt.config import read_yaml
    from qamdt.training.mdt_config import load_mdt_config
    from qamdt.training.mdt_data import training_clips

    s = ctx.settings
    preset = s.resolve_path(s.mdt_config)
    model = {**(read_yaml(preset).get("model") or {}), **s.mdt_model}
    # The preset's sample_size is a whole clip's latent; the trainer sets the excerpt's.
    model.pop("sample_size", None)
    manifest = manifest_path(ctx.out)
    usable, _ = training_clips(manifest, "train", quality, quality)
    return load_mdt_config(
        preset,
        manifest=str(manifest),
        vae=str(ctx.out / "models" / "vae"),
        cache=str(ctx.out / "work" / f"cache-{name}"),
        model=model,
        conditioning={"quality_token": quality, "quality_prefix": quality},
        clip_seconds=s.mdt_clip_seconds,
        batch_size=min(s.mdt_batch_size, len(usable)),
        learning_rate=s.mdt_learning_rate,
        warmup_steps=s.mdt_warmup_steps,
        max_steps=s.mdt_max_steps,
        max_minutes=None,
        checkpoint_every=s.mdt_checkpoint_every,
        seed=s.seed,
    )


def cache(ctx: StageContext) -> dict[str, Any]:
    """Encodes the training clips once for both MDTs (``OUT/work/cache-*``).

    The baseline's clips, audio and VAE are the quality model's: only the captions differ,
    so its cache takes the quality model's latents.
    """
    from qamdt.training.latent_cache import build_cache

    summary = {}
    for name, quality in (("mdt", True), ("mdt-baseline", False)):
        config = _mdt_config(ctx, name, quality)
        shared = ctx.out / "work" / "cache-mdt" if name != "mdt" else None
        started = time.monotonic()
        summary[name] = build_cache(config, config.cache, latents_from=shared)
        summary[name]["seconds"] = round(time.monotonic() - started, 2)
    return summary


def _train_mdt(ctx: StageContext, name: str, pipeline_name: str, quality: bool) -> dict[str, Any]:
    """Trains one MDT on its cache; its pipeline goes to ``OUT/models/<pipeline>``."""
    from qamdt.training.mdt_train import PIPELINE_DIR, train_mdt

    work = ctx.out / "work" / name
    summary = train_mdt(_mdt_config(ctx, name, quality), work)
    copy_tree(work / PIPELINE_DIR, ctx.out / "models" / pipeline_name)
    return {"train": summary, "pipeline": str(ctx.out / "models" / pipeline_name)}


def mdt(ctx: StageContext) -> dict[str, Any]:
    """The quality-aware MDT: quality token and quality prefix."""
    return _train_mdt(ctx, "mdt", "pipeline", quality=True)


def mdt_baseline(ctx: StageContext) -> dict[str, Any]:
    """The plain MDT baseline: same model, steps and seed, no quality conditioning."""
    return _train_mdt(ctx, "mdt-baseline", "pipeline-mdt", quality=False)

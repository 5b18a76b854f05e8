"""``qamdt train`` and ``qamdt cache``: train the quality-aware MDT, pre-compute its inputs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from qamdt.cli.arguments import nonnegative_int, positive_float, positive_int
from qamdt.cli.manifest_commands import part_argument
from qamdt.training.precision import MIXED_PRECISIONS


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="YAML (configs/mdt/*.yaml)")
    parser.add_argument("--manifest", default=None, help="manifest to train on")
    parser.add_argument("--vae", default=None, help="VAE folder (qamdt train-vae OUT/model)")
    parser.add_argument("--text-encoder", default=None, help="'embedded' or a local folder")
    parser.add_argument("--cache", default=None, help="latent cache folder ('auto': OUT/cache)")
    parser.add_argument("--seed", type=nonnegative_int, default=None)
    parser.add_argument("--quiet", action="store_true")


def _overrides(args: argparse.Namespace) -> dict:
    return {
        "manifest": args.manifest,
        "vae": args.vae,
        "text_encoder": args.text_encoder,
        "cache": args.cache,
        "seed": args.seed,
    }


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``train`` and ``cache`` commands."""
    train = groups.add_parser(
        "train",
        help="train the quality-aware MDT (runs under 'accelerate launch' too)",
        description="Trains the quality-aware masked diffusion transformer on a manifest's "
        "clips, captions and quality labels. Resumes from OUT/checkpoint; the EMA weights "
        "are exported to OUT/transformer. Flags override the config file.",
    )
    _add_overrides(train)
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument("--max-steps", type=positive_int, default=None)
    train.add_argument(
        "--max-minutes", type=positive_float, default=None, help="training time budget"
    )
    train.add_argument("--batch-size", type=positive_int, default=None)
    train.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISIONS,
        default=None,
        help="auto: bfloat16 autocast where the hardware computes it natively",
    )
    train.set_defaults(run=run_train)

    cache = groups.add_parser(
        "cache",
        help="pre-compute VAE latents and text states for training",
        description="Encodes the training clips with the frozen VAE and text encoder once, "
        "so training does not re-run them every epoch. Resumes a partial cache.",
    )
    _add_overrides(cache)
    cache.add_argument("--out", type=Path, required=True, help="cache folder")
    cache.add_argument(
        "--latents-from",
        type=Path,
        default=None,
        help="a finished cache of the same clips and VAE weights whose latents to reuse "
        "(only the captions are encoded), e.g. the quality model's for its plain baseline",
    )
    cache.add_argument(
        "--shard",
        type=part_argument,
        default=None,
        metavar="I/N",
        help="encode only the blocks of clips whose index is I modulo N (I from 0), into the "
        "shared cache folder; the part that finds every block written completes the cache",
    )
    cache.set_defaults(run=run_cache)


def run_train(args: argparse.Namespace) -> int:
    """Runs ``qamdt train``."""
    from qamdt.training.mdt_config import load_mdt_config
    from qamdt.training.mdt_train import train_mdt

    config = load_mdt_config(
        args.config,
        **_overrides(args),
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        batch_size=args.batch_size,
        mixed_precision=args.mixed_precision,
    )
    summary = train_mdt(config, args.out, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def run_cache(args: argparse.Namespace) -> int:
    """Runs ``qamdt cache``."""
    from qamdt.training.latent_cache import build_cache
    from qamdt.training.mdt_config import load_mdt_config

    config = load_mdt_config(args.config, **_overrides(args))
    summary = build_cache(
        config,
        args.out,
        progress=not args.quiet,
        latents_from=args.latents_from,
        part=args.shard,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0

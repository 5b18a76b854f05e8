"""``qamdt train-vae``: train the mel VAE (runs under ``accelerate launch`` and ``torchrun``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qamdt.cli.arguments import nonnegative_int, positive_float, positive_int


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``train-vae`` command."""
    parser = groups.add_parser(
        "train-vae",
        help="train the mel VAE on a manifest's clips (runs under 'accelerate launch' too)",
        description="Trains an AutoencoderKL on log-mel crops of the manifest's training "
        "clips, measures the latent scaling factor, saves the model to OUT/model and the "
        "validation reconstruction error to OUT/metrics.json. Resumes from OUT/checkpoint. "
        "Flags override the config file.",
    )
    parser.add_argument("--manifest", type=Path, default=None, help="clip manifest (JSONL)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML settings (default: the built-in embedded settings, which "
        "configs/vae/embedded.yaml repeats)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=positive_float, default=None, help="passes over the clips")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument(
        "--max-minutes", type=positive_float, default=None, help="training time budget"
    )
    parser.add_argument("--seed", type=nonnegative_int, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_train_vae)


def run_train_vae(args: argparse.Namespace) -> int:
    """Runs ``qamdt train-vae``."""
    from qamdt.training.vae_train import METRICS_NAME, load_vae_config, train_vae

    overrides = {
        "manifest": None if args.manifest is None else str(args.manifest),
        "steps": args.steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_minutes": args.max_minutes,
        "seed": args.seed,
    }
    config = load_vae_config(args.config, **overrides)
    if args.steps is not None and config.epochs is not None:  # --steps beats epochs in a file
        config = type(config).from_dict({**config.to_dict(), "epochs": None})
    summary = train_vae(config, args.out, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        l1 = summary["recon_l1_valid"]
        l1_text = "n/a" if l1 is None else f"{l1:.4f}"
        print(
            f"VAE: {summary['steps']} steps in {summary['train_seconds']:.0f} s, "
            f"{summary['valid_split'] or 'valid'} log-mel L1 {l1_text}, "
            f"scaling factor {summary['scaling_factor']:.4f}, "
            f"{len(summary['failures'])} failed clip(s); {args.out / METRICS_NAME}"
        )
    return 0

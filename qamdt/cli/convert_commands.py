"""``qamdt convert released``: the authors' released checkpoint as a pipeline folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``convert`` command group."""
    parser = groups.add_parser(
        "convert",
        help="convert published checkpoints into pipeline folders",
        description="Turns published checkpoints into pipeline folders that "
        "`qamdt generate --model` and QAMDTPipeline.from_pretrained load.",
    )
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    released = commands.add_parser(
        "released",
        help="the authors' QA-MDT checkpoint (checkpoint_389999.ckpt)",
        description="Converts the authors' Lightning checkpoint (one .ckpt file, or its "
        "_part_N pieces) into a pipeline folder: the released transformer "
        "(configs/mdt/released.yaml), the checkpoint's own VAE (with its scale_factor), "
        "HiFi-GAN and FLAN-T5, a DDPM schedule with the released betas, the released "
        "quality statistics (mu 3.80, sigma 0.20) and the released sampling as defaults "
        "(DDIM 200, eta 1, guidance 3.5 against the empty text at level 3). The checkpoint "
        "is memory-mapped and loaded without running pickled code; every key is converted "
        "or deliberately dropped, and anything else is an error naming it.",
    )
    released.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="the .ckpt file, one of its _part_N pieces, or the name they share",
    )
    released.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    released.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the authors' qa_mdt.yaml (default: the published hyper-parameters)",
    )
    released.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="EMA weights (what the authors sample with) or the raw training weights",
    )
    released.add_argument("--vae", type=Path, default=None, help="use this VAE folder instead")
    released.add_argument(
        "--vocoder", type=Path, default=None, help="use this vocoder folder instead"
    )
    released.add_argument(
        "--text-encoder",
        type=Path,
        default=None,
        help="a local FLAN-T5-large folder: its tokenizer (needed), and its weights when "
        "the checkpoint holds none",
    )
    released.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where _part_N pieces are joined into one file (default: beside them)",
    )
    released.set_defaults(run=run_released)


def run_released(args: argparse.Namespace) -> int:
    """Runs ``qamdt convert released``."""
    from mos_predictor.quality_stats import RELEASED_STATS
    from qamdt.convert.released import convert_released

    summary = convert_released(
        args.checkpoint,
        args.out,
        config=args.config,
        weights=args.weights,
        vae=args.vae,
        vocoder=args.vocoder,
        text_encoder=args.text_encoder,
        quality_stats=RELEASED_STATS.to_dict(),
        work_dir=args.work_dir,
    )
    print(json.dumps(summary, indent=1))
    return 0

"""``qamdt model info``: size and shapes of a transformer config, without building weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qamdt.cli.arguments import positive_int


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``model`` command group."""
    parser = groups.add_parser(
        "model",
        help="inspect transformer configs",
        description="Facts about the quality-aware MDT of a config.",
    )
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    info = commands.add_parser(
        "info",
        help="parameter count, latent shape and tokens of a config (JSON)",
        description="Builds the transformer on the meta device (no memory for weights) and "
        "prints its parameter count, latent shape, token count and forward FLOPs as JSON. "
        "CONFIG is a training config (configs/mdt/*.yaml, its 'model' section is used), a "
        "bare model config, or a saved transformer folder / config.json.",
    )
    info.add_argument("--config", type=Path, required=True)
    info.add_argument(
        "--text-length", type=positive_int, default=None, help="text tokens for the FLOPs"
    )
    info.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> int:
    """Runs ``qamdt model info``."""
    from qamdt.models.model_info import describe_model, read_model_config

    values = read_model_config(args.config)
    print(json.dumps(describe_model(values, text_length=args.text_length), indent=1))
    return 0

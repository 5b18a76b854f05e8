"""Entry point of the ``qamdt`` command: one sub-command group per module."""

from __future__ import annotations

import argparse
import sys

from qamdt import __version__
from qamdt.cli import (
    app_commands,
    captions_commands,
    convert_commands,
    corpus_commands,
    demo_commands,
    evaluate_commands,
    generate_commands,
    manifest_commands,
    model_commands,
    mos_commands,
    train_commands,
    vae_commands,
)
from qamdt.curation import cli as curate_commands
from qamdt.errors import QamdtError

COMMAND_GROUPS = (
    corpus_commands,
    manifest_commands,
    mos_commands,
    captions_commands,
    curate_commands,
    train_commands,
    model_commands,
    convert_commands,
    vae_commands,
    generate_commands,
    evaluate_commands,
    demo_commands,
    app_commands,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with ``--help`` on every level."""
    parser = argparse.ArgumentParser(
        prog="qamdt",
        description="Quality-aware text-to-music generation (QA-MDT): data, labels, "
        "training, generation and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"qamdt {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for module in COMMAND_GROUPS:
        module.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    Errors the user can fix (bad files, bad settings) are printed as one line on stderr
    with exit status 2 rather than as a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except QamdtError as error:
        print(f"qamdt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qamdt: interrupted; finished work is kept and the run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

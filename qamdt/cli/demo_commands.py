"""``qamdt demo``: the whole pipeline, corpus to report, in one resumable command."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``demo`` command."""
    from qamdt.demo.run import STAGE_NAMES

    parser = groups.add_parser(
        "demo",
        help="run the whole pipeline on the embedded corpus, corpus to report",
        description="Builds the embedded corpus, trains the MOS predictor, labels p-MOS and "
        "quality levels, trains the captioner and CLAP scorer, refines the captions, trains "
        "the VAE, the quality-aware MDT and a plain MDT baseline, generates the evaluation "
        "prompts at every quality level and with the baselines, evaluates them and writes "
        "OUT/report/report.html. Finished stages are skipped on a re-run (OUT/stages.json "
        f"records them). Stages, in order: {', '.join(STAGE_NAMES)}.",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few dozen clips and a few steps per stage (CI, tests)",
    )
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        choices=STAGE_NAMES,
        metavar="NAME",
        help="run only this stage (repeatable); the stages it needs must be done",
    )
    parser.add_argument(
        "--redo",
        action="append",
        default=[],
        choices=STAGE_NAMES,
        metavar="NAME",
        help="run this stage again from scratch (repeatable); later stages that depend "
        "on it run again too",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="master seed (default 0, or the folder's)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML settings (default: those OUT was run with, else the built-in ones, "
        "which configs/demo.yaml repeats)",
    )
    parser.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """Runs ``qamdt demo``."""
    from qamdt.demo.run import run_demo
    from qamdt.demo.settings import DemoSettings, load_demo_settings
    from qamdt.demo.stages import STATE_NAME, recorded_settings

    recorded = recorded_settings(args.out)
    if recorded is not None and not args.quick and args.config is None and args.seed is None:
        # No settings asked for: carry on with the folder's own (a --quick run stays quick).
        settings = DemoSettings.from_dict(recorded, where=str(args.out / STATE_NAME))
    else:
        settings = load_demo_settings(args.config, quick=args.quick).replace(seed=args.seed)
    state = run_demo(args.out, settings, only=args.stage, redo=args.redo)
    report = (state.record("report").get("result") or {}).get("report")
    if state.done("report") and report:
        print(f"demo: report: {report}")
    else:
        print(f"demo: stages recorded in {args.out / STATE_NAME} (no report yet)")
    return 0

"""``qamdt curate``: the command line of the curation job."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qamdt.cli.arguments import (
    add_stage_arguments,
    nonnegative_int,
    positive_float,
    positive_int,
    stage_exit_status,
)
from qamdt.cli.captions_commands import add_refine_arguments, score_threshold
from qamdt.cli.manifest_commands import add_part_arguments


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``curate`` command."""
    parser = groups.add_parser(
        "curate",
        help="label p-MOS, fit quality levels, refine captions, select and report (resumable)",
        description="One resumable job from a manifest (qamdt manifest create) to a curated "
        "one: p-MOS labelling, quality statistics (fitted, or --stats), levels and prefixes, "
        "caption refinement (with --clap), OUT/manifest.jsonl, OUT/selected.jsonl (with "
        "--select) and OUT/report.html. The input manifest is not changed. With --shard I/N "
        "it labels and scores part I of N only; run it again without --shard when every part "
        "is done. Runs under 'accelerate launch' / torchrun too.",
    )
    parser.add_argument("manifest", type=Path, help="input manifest")
    parser.add_argument("--mos", required=True, help="MOS model folder or name")
    add_refine_arguments(parser, clap_required=False)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="EXPR",
        help="keep rows where FIELD OP VALUE holds in OUT/selected.jsonl, e.g. 'pmos>=3.5', "
        "'level>=4', 'clap>0.2', 'split==train' (repeatable: all must hold)",
    )
    parser.add_argument(
        "--stats", type=Path, default=None, help="apply saved quality_stats.json instead of fitting"
    )
    parser.add_argument("--level-rule", default="five-bin", choices=["five-bin", "eq1", "quantile"])
    parser.add_argument("--prefix-sigmas", type=positive_float, default=1.25)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument(
        "--report-clips", type=nonnegative_int, default=2, help="players per level for each end"
    )
    add_stage_arguments(parser)
    add_part_arguments(parser)
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(run=run_curate)


def run_curate(args: argparse.Namespace) -> int:
    """Runs ``qamdt curate``."""
    import os

    from qamdt.curation.job import curate
    from qamdt.curation.settings import CurationSettings

    settings = CurationSettings(
        mos=args.mos,
        clap=args.clap,
        captioner=args.captioner,
        merger=args.merger,
        llm_model=args.llm_model,
        rho1=score_threshold(args.rho1),
        rho2=score_threshold(args.rho2),
        rho3=score_threshold(args.rho3),
        stats=None if args.stats is None else str(args.stats),
        level_rule=args.level_rule,
        prefix_sigmas=args.prefix_sigmas,
        select=tuple(args.select),
        batch_size=args.batch_size,
        workers=args.workers,
        min_seconds=args.min_seconds,
        part=args.shard,
        resume_anyway=args.resume_anyway,
        report_clips=args.report_clips,
    )
    summary = curate(args.manifest, args.out, settings, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, default=str))
    return stage_exit_status(summary["label"])

"""``qamdt evaluate``: score generated audio against a reference set and write a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from qamdt.cli.arguments import nonnegative_int, positive_int

TABLE_COLUMNS = (
    ("level", "level", "{}"),
    ("count", "n", "{}"),
    ("pmos_mean", "p-MOS", "{:.3f}"),
    ("frechet", "FD", "{:.3f}"),
    ("frechet_se", "FD se", "{:.3f}"),
    ("kl", "KL", "{:.3f}"),
    ("is", "IS", "{:.3f}"),
    ("clap", "CLAP", "{:.3f}"),
    ("clap_shuffled", "CLAP-shuf", "{:.3f}"),
)


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``evaluate`` command."""
    parser = groups.add_parser(
        "evaluate",
        help="score generated audio per quality level (FD, KL, IS, CLAP, p-MOS) with a report",
        description="Scores a folder written by 'qamdt generate' (NAME.wav + NAME.json with "
        "the prompt and quality level) against a reference manifest or folder, overall and "
        "per quality level, and writes OUT/report.json and OUT/report.html. The embedded "
        "backend uses the project's own CLAP audio tower and tagger (not VGGish/PANNs); "
        "the audioldm-eval backend gives the published FAD/KL/IS from local checkpoints.",
    )
    parser.add_argument("--generated", type=Path, required=True, help="generated folder")
    parser.add_argument(
        "--reference", type=Path, required=True, help="reference manifest or audio folder"
    )
    parser.add_argument("--split", default="test", help="manifest split, or 'all'")
    parser.add_argument(
        "--reference-filter",
        default="all",
        help="all | clean (corpus rows with no degradation) | quality>=K",
    )
    parser.add_argument("--mos", default=None, help="MOS model folder or name (p-MOS)")
    parser.add_argument("--clap", default=None, help="CLAP model folder or name")
    parser.add_argument("--captioner", default=None, help="embedded captioner (KL, IS)")
    parser.add_argument("--backend", default="embedded", choices=["embedded", "audioldm-eval"])
    parser.add_argument(
        "--frechet-features",
        default=None,
        help="embedded backend's Frechet features: frames (every clip's CLAP frame "
        "features, the default for the embedded CLAP), pooled (one vector per clip) or "
        "projected (the joint-space embedding, the default for other CLAP kinds)",
    )
    parser.add_argument(
        "--audioldm-eval-ckpt",
        type=Path,
        default=None,
        help="folder with the audioldm_eval checkpoints (or $QAMDT_AUDIOLDM_EVAL_CKPT)",
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--examples-per-level", type=nonnegative_int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled-prompt control")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_evaluate)


def format_table(results: dict) -> str:
    """The overall row and the quality sweep as a fixed-width text table."""
    rows = [{**results["overall"], "level": "all"}, *results["quality_sweep"]]
    cells = [[title for _, title, _ in TABLE_COLUMNS]]
    for row in rows:
        line = []
        for key, _, pattern in TABLE_COLUMNS:
            value = row.get(key)
            if key == "level" and value is None:
                value = "none"
            line.append("-" if value is None else pattern.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(TABLE_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def run_evaluate(args: argparse.Namespace) -> int:
    """Runs ``qamdt evaluate``."""
    from qamdt.evaluation.evaluate import evaluate_generated

    mos = clap = captioner = None
    if args.mos:
        from mos_predictor.models import load_mos_model

        mos = load_mos_model(args.mos)
    if args.clap:
        from captioning.base import load_clap

        clap = load_clap(args.clap)
    if args.captioner:
        from captioning.base import load_captioner

        captioner = load_captioner(args.captioner)
    results = evaluate_generated(
        args.generated,
        args.reference,
        mos_model=mos,
        clap=clap,
        captioner=captioner,
        out=args.out,
        frechet_features=args.frechet_features,
        split=args.split,
        reference_filter=args.reference_filter,
        backend=args.backend,
        audioldm_eval_ckpt=args.audioldm_eval_ckpt,
        batch_size=args.batch_size,
        seed=args.seed,
        examples_per_level=args.examples_per_level,
        progress=not args.quiet,
    )
    print(f"backend: {results['backend']}")
    print(format_table(results))
    if results["failures"]:
        print(f"{len(results['failures'])} file(s) could not be scored (see the report)")
    print(f"report: {args.out / 'report.html'}")
    return 0

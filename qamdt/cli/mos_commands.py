"""``qamdt mos``: train and evaluate MOS models, label manifests with p-MOS, fit quality levels."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from qamdt.cli.arguments import (
    add_stage_arguments,
    nonnegative_int,
    positive_float,
    positive_int,
    stage_exit_status,
)
from qamdt.cli.manifest_commands import add_part_arguments


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``mos`` command group."""
    parser = groups.add_parser(
        "mos",
        help="MOS predictor: train, evaluate, label p-MOS, quality statistics",
        description="The MOS predictor turns audio into p-MOS; the quality statistics turn "
        "p-MOS into quality levels (1-5) and text prefixes.",
    )
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a MOS model (runs under 'accelerate launch' too)",
        description="Trains a MOS model on rated clips and keeps the best checkpoint in "
        "OUT/model. Resumes from OUT/checkpoint. Flags override the config file.",
    )
    train.add_argument("--config", type=Path, default=None, help="YAML (configs/mos/*.yaml)")
    train.add_argument("--data", default=None, help="corpus:MANIFEST | musiceval:ROOT | csv:FILE")
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument("--epochs", type=positive_int, default=None)
    train.add_argument("--batch-size", type=positive_int, default=None)
    train.add_argument(
        "--max-minutes", type=positive_float, default=None, help="training time budget"
    )
    train.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help="stop after this many epochs without a better validation SRCC",
    )
    train.add_argument(
        "--exclude-degradation",
        action="append",
        default=None,
        dest="exclude_degradations",
        help="corpus degradation kind to hold out of training (repeatable)",
    )
    train.add_argument("--seed", type=nonnegative_int, default=None)
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser(
        "eval",
        help="MSE, LCC, SRCC, Kendall tau of a model on rated clips; the generalisation protocol",
        description="Evaluates at utterance and system level; prints a table, or JSON. With "
        "--protocol, also runs the generalisation protocol (docs/mos.md) on the real-music "
        "sources and degradation kinds the model was trained without.",
    )
    evaluate.add_argument("--model", required=True, help="model folder or name")
    evaluate.add_argument(
        "--data",
        default=None,
        help="corpus:MANIFEST | musiceval:ROOT | csv:FILE (optional with --protocol)",
    )
    evaluate.add_argument(
        "--protocol",
        action="store_true",
        help="run the generalisation protocol on held-out sources and degradation kinds",
    )
    evaluate.add_argument(
        "--holdout-sources",
        nargs="+",
        default=None,
        help="held-out real-music sources (default: those the model was trained without)",
    )
    evaluate.add_argument(
        "--holdout-families",
        nargs="*",
        default=None,
        help="degradation kinds held out of training (default: as the model recorded)",
    )
    evaluate.add_argument(
        "--min-kbps-per-channel",
        type=float,
        default=None,
        help="leave held-out files coded below this bitrate per channel out of the clean "
        "recordings (default: the model's real_min_kbps_per_channel)",
    )
    evaluate.add_argument(
        "--excerpts-per-file",
        type=positive_int,
        default=1,
        help="protocol excerpts per held-out file",
    )
    evaluate.add_argument(
        "--excerpt-seconds",
        type=float,
        default=None,
        help="length of each protocol excerpt, scored as any clip is, its windows averaged "
        "(default: the model's window)",
    )
    evaluate.add_argument("--workers", type=int, default=2, help="processes for the protocol")
    evaluate.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    evaluate.add_argument("--split", default="test", help="split to evaluate, or 'all'")
    evaluate.add_argument(
        "--only-degradations",
        default=None,
        help="comma-separated corpus degradation kinds: keep clips degraded only by these",
    )
    evaluate.add_argument(
        "--system-rule",
        default="field",
        help="system id rule: field | first_underscore | parent | meta:KEY | regex:PATTERN | none",
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=16)
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(run=run_eval)

    label = commands.add_parser(
        "label",
        help="write p-MOS into every row of a manifest (resumable, shardable)",
        description="Scores every row without a p-MOS (mean over the model's windows) and "
        "writes it back. Run under 'accelerate launch' to split the rows across processes.",
    )
    label.add_argument("manifest", type=Path)
    label.add_argument("--model", required=True, help="model folder or name")
    label.add_argument("--batch-size", type=positive_int, default=16)
    label.add_argument("--overwrite", action="store_true", help="re-score rows with a p-MOS")
    add_stage_arguments(label)
    add_part_arguments(label)
    label.add_argument("--quiet", action="store_true")
    label.set_defaults(run=run_label)

    predict = commands.add_parser(
        "predict",
        help="score loose audio files; prints one JSON object",
        description="Prints {path: score} (or {path: {omq, ta}} for text-aware models).",
    )
    predict.add_argument("audio", nargs="+", type=Path)
    predict.add_argument("--model", required=True, help="model folder or name")
    predict.add_argument("--text", default=None, help="caption for text-aware models")
    predict.add_argument("--batch-size", type=positive_int, default=16)
    predict.set_defaults(run=run_predict)

    stats = commands.add_parser(
        "stats",
        help="fit mu, sigma and a skew-normal; assign quality levels and prefixes",
        description="Fits the p-MOS statistics of a labelled manifest, writes quality_level "
        "and quality_prefix into its rows, and writes quality_stats.json and "
        "quality_distribution.png beside it.",
    )
    stats.add_argument("manifest", type=Path)
    stats.add_argument(
        "--level-rule",
        default="five-bin",
        choices=["five-bin", "eq1", "quantile"],
        help="five-bin (default, as released), the paper's eq. 1 as printed, or quantile "
        "(edges at quantiles of the p-MOS set; see --level-shares)",
    )
    stats.add_argument(
        "--level-shares",
        type=float,
        nargs=5,
        default=None,
        metavar="SHARE",
        help="shares of levels 1-5 for --level-rule quantile (default: a normal set's "
        "shares under five-bin, 2.3/13.6/68.3/13.6/2.3%%)",
    )
    stats.add_argument(
        "--prefix-sigmas",
        type=float,
        default=1.25,
        help="prefix thresholds at mu -/+ this many sigma (default 1.25)",
    )
    stats.add_argument(
        "--prefix-thresholds",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW_BELOW", "HIGH_FROM"),
        help="absolute p-MOS thresholds instead",
    )
    stats.add_argument(
        "--stats",
        type=Path,
        default=None,
        help="reuse saved statistics (e.g. the training set's) instead of fitting new ones",
    )
    stats.add_argument("--no-plot", action="store_true")
    stats.set_defaults(run=run_stats)


def run_train(args: argparse.Namespace) -> int:
    """Runs ``qamdt mos train``."""
    from mos_predictor.train import load_train_config, train_mos_model

    config = load_train_config(
        args.config,
        data=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_minutes=args.max_minutes,
        patience=args.patience,
        exclude_degradations=args.exclude_degradations,
        seed=args.seed,
    )
    summary = train_mos_model(config, args.out, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Runs ``qamdt mos eval``."""
    from mos_predictor.data import load_ratings
    from mos_predictor.metrics import format_metrics
    from mos_predictor.models import load_mos_model
    from mos_predictor.train import evaluate_model

    if args.data is None and not args.protocol:
        print("qamdt: error: mos eval: give --data, --protocol or both", file=sys.stderr)
        return 2
    clips = []
    if args.data is not None:
        options = {}
        if args.only_degradations:
            options["only_degradations"] = set(args.only_degradations.split(","))
        split = None if args.split == "all" else args.split
        clips = load_ratings(args.data, split=split, **options)
        if not clips:
            print(f"qamdt: error: {args.data}: no clips in split '{args.split}'", file=sys.stderr)
            return 2
    model = load_mos_model(args.model)
    result = {}
    if clips:
        result = evaluate_model(model, clips, args.batch_size, args.system_rule)
        if not args.json:
            for target, metrics in result.items():
                print(f"{target} ({len(clips)} clips)")
                print(format_metrics(metrics))
    if args.protocol:
        result["protocol"] = _run_protocol(args, model)
    if args.json:
        print(json.dumps(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


def _run_protocol(args: argparse.Namespace, model) -> dict:
    from mos_predictor.protocol import format_protocol, run_protocol, settings_for_model

    settings = settings_for_model(
        args.model,
        args.holdout_sources,
        args.holdout_families,
        args.min_kbps_per_channel,
        excerpts_per_file=args.excerpts_per_file,
        workers=args.workers,
        excerpt_seconds=args.excerpt_seconds,
    )
    protocol = run_protocol(model, settings, args.batch_size, progress=not args.json)
    if not args.json:
        print(f"protocol (held-out sources {list(settings.sources)})")
        print(format_protocol(protocol))
    return protocol


def run_label(args: argparse.Namespace) -> int:
    """Runs ``qamdt mos label``."""
    from mos_predictor.label import label_manifest
    from mos_predictor.models import load_mos_model

    model = load_mos_model(args.model)
    summary = label_manifest(
        args.manifest,
        model,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
        resume_anyway=args.resume_anyway,
        min_seconds=args.min_seconds,
        workers=args.workers,
        part=args.shard,
    )
    print(json.dumps(summary))
    return stage_exit_status(summary)


def run_predict(args: argparse.Namespace) -> int:
    """Runs ``qamdt mos predict``."""
    from mos_predictor.models import load_mos_model
    from qamdt.cli.loose_audio import load_loose_files

    model = load_mos_model(args.model)
    result, waves, rates, paths = load_loose_files(args.audio)
    if waves:
        texts = [args.text or ""] * len(waves) if model.config.kind == "text-aware" else None
        scores = model.predict(waves, rates, texts=texts, batch_size=args.batch_size)
        for path, score in zip(paths, scores, strict=True):
            result[path] = (
                round(score["omq"], 4)
                if len(score) == 1
                else {k: round(v, 4) for k, v in score.items()}
            )
    print(json.dumps({str(p): result[str(p)] for p in args.audio}))
    return 1 if any(isinstance(v, dict) and "error" in v for v in result.values()) else 0


def run_stats(args: argparse.Namespace) -> int:
    """Runs ``qamdt mos stats``."""
    from mos_predictor.stats import run_stats

    if args.stats is not None:
        options = {"stats": args.stats}
    else:
        options = {
            "level_rule": args.level_rule,
            "prefix_sigmas": args.prefix_sigmas,
            "prefix_thresholds": tuple(args.prefix_thresholds) if args.prefix_thresholds else None,
            "level_shares": args.level_shares,
        }
    summary = run_stats(args.manifest, plot=not args.no_plot, **options)
    print(json.dumps(summary, default=str))
    return 0

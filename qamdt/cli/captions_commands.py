"""``qamdt captions``: caption audio, score captions with CLAP, refine a manifest, train models."""

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
from qamdt.cli.manifest_commands import add_part_arguments
from qamdt.training.precision import BFLOAT16_PRECISIONS


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``captions`` command group."""
    parser = groups.add_parser(
        "captions",
        help="captioners, CLAP scores and caption refinement",
        description="Caption refinement (paper eqs. 8-10): generated captions, CLAP "
        "filtering and merging with the original captions.",
    )
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    score = commands.add_parser(
        "score",
        help="CLAP cosine similarity of texts to one audio file; prints JSON",
        description="Prints {text: cosine} for each --text against --audio.",
    )
    score.add_argument("--audio", type=Path, required=True)
    score.add_argument("--text", action="append", required=True, help="repeatable")
    score.add_argument("--model", required=True, help="CLAP scorer folder or name")
    score.set_defaults(run=run_score)

    caption = commands.add_parser(
        "caption",
        help="caption audio files; prints JSON",
        description="Prints {path: caption} for each audio file.",
    )
    caption.add_argument("audio", type=Path, nargs="+")
    caption.add_argument("--model", required=True, help="captioner folder or name")
    caption.add_argument("--batch-size", type=positive_int, default=8)
    caption.set_defaults(run=run_caption)

    refine = commands.add_parser(
        "refine",
        help="generate, CLAP-filter and merge captions of a manifest (eqs. 8-10)",
        description="Writes generated_caption, clap scores, final_caption and caption_source "
        "into every row; resumable; split across processes under torchrun / accelerate "
        "launch. Thresholds are numbers or percentiles ('p8.9').",
    )
    refine.add_argument("manifest", type=Path)
    add_refine_arguments(refine, clap_required=True)
    refine.add_argument("--batch-size", type=positive_int, default=16)
    refine.add_argument("--regenerate", action="store_true", help="caption every clip again")
    add_stage_arguments(refine)
    add_part_arguments(refine)
    refine.add_argument("--quiet", action="store_true")
    refine.set_defaults(run=run_refine)

    evaluate = commands.add_parser(
        "evaluate",
        help="tag F1 of original, generated and final captions against the truth",
        description="For manifests whose rows keep their true tags (the embedded corpus): "
        "tag-level F1 of D_o, D_g and D_merge, and how many wrong / correct original "
        "captions eq. 9 removed.",
    )
    evaluate.add_argument("manifest", type=Path)
    evaluate.add_argument("--split", default="test", help="split, or 'all'")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=run_evaluate)

    for name, what in (("train-clap", "CLAP scorer"), ("train-captioner", "captioner")):
        train = commands.add_parser(
            name,
            help=f"train the embedded {what} on a corpus manifest",
            description=f"Trains the embedded {what} on the train split (true captions and "
            "tags of the embedded corpus) and keeps the best validation epoch in --out.",
        )
        train.add_argument("--data", type=Path, required=True, help="corpus manifest")
        train.add_argument("--out", type=Path, required=True, help="model folder")
        train.add_argument("--epochs", type=positive_int, default=None)
        train.add_argument("--batch-size", type=positive_int, default=None)
        train.add_argument("--max-minutes", type=positive_float, default=None)
        train.add_argument("--seed", type=nonnegative_int, default=0)
        train.add_argument(
            "--mixed-precision",
            choices=BFLOAT16_PRECISIONS,
            default=None,
            help="bf16: bfloat16 autocast; auto (default): where the CPU computes it natively",
        )
        train.set_defaults(run=run_train_clap if name == "train-clap" else run_train_captioner)


def add_refine_arguments(parser: argparse.ArgumentParser, clap_required: bool) -> None:
    """The models and thresholds of caption refinement (``captions refine``, ``curate``)."""
    parser.add_argument("--clap", required=clap_required, help="CLAP scorer folder or name")
    parser.add_argument("--captioner", default=None, help="captioner folder or name")
    parser.add_argument("--merger", default="rule", choices=["rule", "llm"])
    parser.add_argument("--llm-model", default=None, help="local instruct model folder")
    parser.add_argument("--rho1", default="0.1", help="eq. 8 threshold (number or pX)")
    parser.add_argument("--rho2", default="0.1", help="eq. 9 threshold (number or pX)")
    parser.add_argument("--rho3", default="0.25", help="eq. 10 threshold (number or pX)")


def score_threshold(value: str) -> float | str:
    """A threshold argument: a number, or a percentile such as ``p8.9`` (checked later)."""
    try:
        return float(value)
    except ValueError:
        return value


def run_score(args: argparse.Namespace) -> int:
    """Runs ``qamdt captions score``."""
    from captioning.base import load_clap
    from qamdt.audio_io import load_audio

    scorer = load_clap(args.model)
    wave, rate = load_audio(args.audio)
    scores = scorer.text_audio_scores([wave] * len(args.text), rate, list(args.text))
    print(json.dumps({text: round(float(s), 5) for text, s in zip(args.text, scores, strict=True)}))
    return 0


def run_caption(args: argparse.Namespace) -> int:
    """Runs ``qamdt captions caption``."""
    from captioning.base import load_captioner
    from qamdt.cli.loose_audio import load_loose_files

    captioner = load_captioner(args.model)
    result, waves, rates, paths = load_loose_files(args.audio)
    if waves:
        captions = captioner.caption(waves, rates, batch_size=args.batch_size)
        result.update(zip(paths, captions, strict=True))
    print(json.dumps({str(p): result[str(p)] for p in args.audio}))
    return 1 if any(isinstance(v, dict) for v in result.values()) else 0


def run_refine(args: argparse.Namespace) -> int:
    """Runs ``qamdt captions refine``."""
    import os

    from captioning.base import load_captioner, load_clap
    from captioning.merge import build_merger
    from captioning.refine import RefineSettings, refine_manifest

    settings = RefineSettings(
        rho1=score_threshold(args.rho1),
        rho2=score_threshold(args.rho2),
        rho3=score_threshold(args.rho3),
    )
    summary = refine_manifest(
        args.manifest,
        load_clap(args.clap),
        load_captioner(args.captioner) if args.captioner else None,
        build_merger(args.merger, args.llm_model),
        settings,
        batch_size=args.batch_size,
        regenerate=args.regenerate,
        progress=not args.quiet,
        resume_anyway=args.resume_anyway,
        min_seconds=args.min_seconds,
        workers=args.workers,
        part=args.shard,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return stage_exit_status(summary["stage1"])


def run_evaluate(args: argparse.Namespace) -> int:
    """Runs ``qamdt captions evaluate``."""
    from captioning.evaluate import evaluate_manifest, format_evaluation

    result = evaluate_manifest(args.manifest, None if args.split == "all" else args.split)
    print(json.dumps(result) if args.json else format_evaluation(result))
    return 0


def _options(args: argparse.Namespace) -> dict:
    names = ("epochs", "batch_size", "max_minutes", "seed", "mixed_precision")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_train_clap(args: argparse.Namespace) -> int:
    """Runs ``qamdt captions train-clap``."""
    from captioning.train_clap import train_embedded_clap

    print(json.dumps(train_embedded_clap(args.data, args.out, **_options(args)), default=str))
    return 0


def run_train_captioner(args: argparse.Namespace) -> int:
    """Runs ``qamdt captions train-captioner``."""
    from captioning.train_captioner import train_embedded_captioner

    summary = train_embedded_captioner(args.data, args.out, **_options(args))
    print(json.dumps(summary, default=str))
    return 0

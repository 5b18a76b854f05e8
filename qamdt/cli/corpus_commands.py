"""``qamdt corpus``: build and describe the embedded music corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from qamdt.cli.arguments import fraction, nonnegative_int, positive_int


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``corpus`` command group."""
    parser = groups.add_parser(
        "corpus",
        help="build and describe the embedded music corpus",
        description="The embedded corpus: real music21 scores rendered with FluidSynth, "
        "with seeded quality degradations and weak original captions.",
    )
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    build = commands.add_parser(
        "build",
        help="render, degrade and caption clips into a folder with a manifest",
        description="Builds the corpus into OUT: audio/<split>/*.wav, manifest.jsonl, "
        "corpus.json. Deterministic for a seed; resumes after a kill; a second run with "
        "the same settings does nothing.",
    )
    build.add_argument("--out", required=True, type=Path, help="output folder")
    build.add_argument(
        "--config", type=Path, default=None, help="YAML settings (see configs/corpus.yaml)"
    )
    build.add_argument(
        "--clips", type=positive_int, default=None, help="number of clips (default 1000)"
    )
    build.add_argument("--seed", type=nonnegative_int, default=None, help="master seed (default 0)")
    build.add_argument(
        "--preset", default=None, choices=["embedded", "paper"], help="audio preset (embedded)"
    )
    build.add_argument(
        "--workers", type=positive_int, default=None, help="processes (default: cores)"
    )
    build.add_argument(
        "--clean-fraction", type=fraction, default=None, help="share of undegraded clips"
    )
    build.add_argument("--format", default=None, choices=["wav", "flac"], dest="audio_format")
    build.add_argument("--soundfont", default=None, help="a .sf2 file instead of FluidR3_GM")
    build.add_argument(
        "--overwrite", action="store_true", help="replace a corpus built with other settings"
    )
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(run=run_build)

    describe = commands.add_parser(
        "describe",
        help="tables and a picture of a built corpus",
        description="Writes corpus.md (make-up tables) and corpus.png (spectrograms of a "
        "clean and a degraded clip, reference-quality distribution) for a built corpus.",
    )
    describe.add_argument("corpus", type=Path, help="folder given to 'corpus build --out'")
    describe.add_argument("--out", type=Path, default=None, help="folder (default: CORPUS)")
    describe.set_defaults(run=run_describe)


def run_build(args: argparse.Namespace) -> int:
    """Runs ``qamdt corpus build``."""
    import dataclasses

    from qamdt.corpus.build import CorpusConfig, build_corpus, load_corpus_config

    overrides = {
        "clips": args.clips,
        "seed": args.seed,
        "preset": args.preset,
        "audio_format": args.audio_format,
    }
    if args.config is not None:
        config = load_corpus_config(args.config, **overrides)
    else:
        values = {key: value for key, value in overrides.items() if value is not None}
        config = CorpusConfig.from_dict({"clips": 1000, **values})
    if args.clean_fraction is not None:
        degradation = dataclasses.replace(config.degradation, clean_fraction=args.clean_fraction)
        config = dataclasses.replace(config, degradation=degradation)
    manifest = build_corpus(
        args.out,
        config,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
        soundfont=args.soundfont,
    )
    print(manifest)
    return 0


def run_describe(args: argparse.Namespace) -> int:
    """Runs ``qamdt corpus describe``."""
    from qamdt.corpus.describe import describe_corpus

    markdown, picture = describe_corpus(args.corpus, args.out)
    print(markdown)
    print(picture)
    return 0

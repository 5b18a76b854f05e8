"""``qamdt manifest``: validate, summarise and merge clip manifests."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qamdt.cli.arguments import positive_int


def part_argument(text: str) -> tuple[int, int]:
    """``--shard I/N``: part I of N of a manifest's rows, counted from 0."""
    from qamdt.errors import ConfigError
    from qamdt.manifest.parts import parse_part

    try:
        return parse_part(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--shard: ")) from None


def add_part_arguments(parser: argparse.ArgumentParser) -> None:
    """``--shard I/N`` and ``--workers N``, shared by the stages that process rows."""
    from qamdt.cli.arguments import nonnegative_int

    parser.add_argument(
        "--shard",
        type=part_argument,
        default=None,
        metavar="I/N",
        help="process part I of N (rows whose position is I modulo N, I from 0) into its own "
        "part file beside the manifest; join the parts with 'qamdt manifest merge'",
    )
    parser.add_argument(
        "--workers",
        type=nonnegative_int,
        default=0,
        help="processes decoding audio ahead of the model (0: one thread)",
    )


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``manifest`` command group."""
    parser = groups.add_parser(
        "manifest",
        help="validate, summarise and merge clip manifests",
        description="The clip manifest (JSONL, one row per clip) holds every label a clip "
        "gets; these commands check and combine manifests.",
    )
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    create = commands.add_parser(
        "create",
        help="a manifest from folders of audio files (no audio copied)",
        description="Finds WAV, FLAC, OGG, Opus, MP3 (and M4A where a decoder reads it) "
        "recursively, reads duration and format from the headers, cuts long files into "
        "clip rows that point into the file (offset, duration), takes captions from "
        "--captions (CSV or JSONL: path or id, caption or tags) or from NAME.txt / "
        "NAME.json beside each file, and assigns stable ids and a deterministic split. "
        "Unreadable files are listed in OUT.failures.jsonl with the reason.",
    )
    create.add_argument("audio_dirs", type=Path, nargs="+", metavar="AUDIO_DIR")
    create.add_argument("--out", type=Path, required=True, help="manifest to write")
    create.add_argument("--captions", type=Path, default=None, help="CSV or JSONL captions")
    create.add_argument(
        "--clip-seconds", type=float, default=None, help="cut files into clips this long"
    )
    create.add_argument(
        "--hop-seconds", type=float, default=None, help="clip start distance (default: no overlap)"
    )
    create.add_argument("--split-by", choices=["file", "folder"], default="file")
    create.add_argument(
        "--split", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VALID", "TEST")
    )
    create.add_argument("--workers", type=int, default=4, help="threads reading headers")
    create.set_defaults(run=run_create)

    validate = commands.add_parser(
        "validate",
        help="check every row; report each error with its line and field",
        description="Validates a manifest and, with --check-audio, that each audio file "
        "exists. Exit status 1 when errors are found.",
    )
    validate.add_argument("manifest", type=Path)
    validate.add_argument("--check-audio", action="store_true", help="also check audio files")
    validate.add_argument("--max-errors", type=positive_int, default=50)
    validate.set_defaults(run=run_validate)

    stats = commands.add_parser("stats", help="summary statistics of a manifest")
    stats.add_argument("manifest", type=Path)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(run=run_stats)

    merge = commands.add_parser(
        "merge",
        help="merge per-shard manifests, or the parts of --shard I/N runs",
        description="Without --base, concatenates the shards. With --base, keeps the base's "
        "rows and order and replaces each row a shard holds by the shard's version. Part "
        "files of '--shard I/N' runs (NAME.STAGE-partIofN.jsonl) are checked (complete, one "
        "model and settings, every part present) and only the fields their stage owns are "
        "copied into the base (default: the manifest they came from; --out default: the base).",
    )
    merge.add_argument("shards", type=Path, nargs="+", help="shard manifests or part files")
    merge.add_argument("--out", type=Path, default=None, help="merged manifest")
    merge.add_argument("--base", type=Path, default=None, help="manifest the shards update")
    merge.add_argument(
        "--on-conflict",
        choices=["error", "last"],
        default="error",
        help="what to do when two shards hold the same id",
    )
    merge.set_defaults(run=run_merge)


def run_create(args: argparse.Namespace) -> int:
    """Runs ``qamdt manifest create``."""
    from qamdt.manifest.create import CreateSettings, create_manifest

    settings = CreateSettings(
        clip_seconds=args.clip_seconds,
        hop_seconds=args.hop_seconds,
        split_by=args.split_by,
        split=tuple(args.split),
        workers=args.workers,
    )
    summary = create_manifest(
        args.audio_dirs, args.out, settings, captions=args.captions, progress=True
    )
    print(json.dumps(summary, indent=1))
    if summary["unreadable"]:
        print(
            f"{summary['unreadable']} unreadable file(s) listed in {args.out}.failures.jsonl",
            file=sys.stderr,
        )
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Runs ``qamdt manifest validate``."""
    from qamdt.manifest import find_manifest_errors, iter_manifest

    errors = [str(e) for e in find_manifest_errors(args.manifest, limit=args.max_errors)]
    rows = 0
    if not errors:
        for record in iter_manifest(args.manifest):
            rows += 1
            if args.check_audio and not record.audio_path(args.manifest.parent).is_file():
                errors.append(f"{args.manifest}: row id '{record.id}': audio file "
                              f"{record.audio_path(args.manifest.parent)} is missing")  # fmt: skip
                if len(errors) >= args.max_errors:
                    break
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        print(f"{args.manifest}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"{args.manifest}: {rows} rows, valid")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    """Runs ``qamdt manifest stats``."""
    from qamdt.manifest import format_summary, iter_manifest, summarize

    summary = summarize(iter_manifest(args.manifest))
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Runs ``qamdt manifest merge``."""
    from qamdt.errors import ConfigError
    from qamdt.manifest import merge_manifests
    from qamdt.manifest.parts import merge_parts, read_part_state
    from qamdt.manifest.stage_state import real_manifest

    parts = [path for path in args.shards if read_part_state(path) is not None]
    if parts and len(parts) < len(args.shards):
        plain = [str(p) for p in args.shards if p not in parts]
        raise ConfigError(f"merge: part files and plain shards mixed; not parts: {plain}")
    if parts:
        first = read_part_state(parts[0])
        base = args.base or real_manifest(parts[0].parent / first["base"])
        out = args.out or base
        print(json.dumps(merge_parts(parts, out, base)))
        return 0
    if args.out is None:
        raise ConfigError("merge: --out is needed to merge plain shards")
    result = merge_manifests(
        args.out, args.shards, base_path=args.base, on_conflict=args.on_conflict
    )
    print(json.dumps(result if isinstance(result, dict) else vars(result)))
    return 0

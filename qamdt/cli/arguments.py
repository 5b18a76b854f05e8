"""Argument types of the command line: each bad value is refused before any work starts."""

from __future__ import annotations

import argparse
import math


def _checked(convert, noun: str, accept, rule: str, name: str, doc: str):
    """An argparse type: ``convert`` the text, then refuse values ``accept`` rejects."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    parse.__name__, parse.__doc__ = name, doc
    return parse


positive_int = _checked(
    int, "a whole number", lambda v: v >= 1, "must be at least 1", "positive_int",
    "An integer of at least 1 (counts, batch sizes).",
)  # fmt: skip
nonnegative_int = _checked(
    int, "a whole number", lambda v: v >= 0, "must be at least 0", "nonnegative_int",
    "An integer of at least 0 (counts where none is allowed).",
)  # fmt: skip
positive_float = _checked(
    float, "a number", lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0",
    "positive_float", "A finite number above 0 (time budgets, lengths).",
)  # fmt: skip
nonnegative_float = _checked(
    float, "a number", lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0",
    "nonnegative_float", "A finite number of at least 0 (durations, thresholds in seconds).",
)  # fmt: skip
fraction = _checked(
    float, "a number", lambda v: 0.0 <= v <= 1.0, "must lie within [0, 1]", "fraction",
    "A number within [0, 1] (shares).",
)  # fmt: skip


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every resumable manifest stage shares."""
    from qamdt.manifest.stages import MIN_CLIP_SECONDS

    parser.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume from a shard left by another model or other settings (normally discarded)",
    )
    parser.add_argument(
        "--min-seconds",
        type=nonnegative_float,
        default=MIN_CLIP_SECONDS,
        help="shortest clip processed; shorter ones get an error in their row",
    )


def stage_exit_status(summary: dict) -> int:
    """1 when every row of the manifest failed (none done now or before), else 0.

    A re-run that only retries a few broken clips of a finished manifest still exits 0.
    """
    return 1 if summary["failed"] and not summary["scored"] and not summary["skipped"] else 0


def device_name(text: str) -> str:
    """A torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device name: {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
    return text


def add_torch_dtype_argument(parser) -> None:
    """Adds ``--torch-dtype`` (checked with ``parse_dtype`` before anything loads)."""
    parser.add_argument(
        "--torch-dtype",
        default=None,
        metavar="DTYPE",
        help="run every model in float32 (default), bfloat16 or float16; or some of them: "
        "'vocoder=bfloat16' (its residual blocks: faster on CPUs with bfloat16 instructions, "
        "same p-MOS), 'bfloat16,vocoder=float32' (models: text_encoder, transformer, vae, "
        "vocoder; docs/speed.md)",
    )

"""Argument types of the command line: each bad value is refused before any work starts."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An integer of at least 1 (counts, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer of at least 0 (counts where none is allowed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (time budgets, lengths)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number within [0, 1] (shares)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie within [0, 1], got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number of at least 0 (durations, thresholds in seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


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

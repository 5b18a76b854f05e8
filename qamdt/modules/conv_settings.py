"""Checks of the conv-stack settings the log-mel CNN configs share (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence

from qamdt.errors import ConfigError


def checked_conv_settings(
    channels: Sequence[int], strides: Sequence[Sequence[int]]
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """A config's ``cnn_channels`` and ``cnn_strides`` as int tuples, checked.

    Args:
        channels: Output channels of each conv block.
        strides: ``(frequency, time)`` stride of each block.

    Returns:
        ``(channels, strides)`` as tuples of ints.

    Raises:
        ConfigError: Naming ``cnn_channels`` or ``cnn_strides`` when their lengths differ
            or are zero, or an entry is below 1.
    """
    channels = tuple(int(c) for c in channels)
    strides = tuple(tuple(int(v) for v in s) for s in strides)
    if not channels or len(channels) != len(strides):
        raise ConfigError(
            "cnn_channels and cnn_strides need the same, non-zero number of entries, got "
            f"{len(channels)} and {len(strides)}"
        )
    if min(channels) < 1:
        raise ConfigError(f"cnn_channels must be >= 1, got {channels}")
    if any(len(s) != 2 or min(s) < 1 for s in strides):
        raise ConfigError(f"cnn_strides: each entry must be two ints >= 1, got {strides}")
    return channels, strides

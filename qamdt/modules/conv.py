"""The strided 2-D conv stack of the log-mel CNNs (MOS model, tagger, CLAP audio tower)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """3x3 convolution (strided for down-sampling), batch norm and GELU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: ``(frequency, time)`` stride.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int]):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )


def conv_stack(
    channels: Sequence[int], strides: Sequence[tuple[int, int]], n_mels: int
) -> tuple[nn.Sequential, int]:
    """Conv blocks over a one-channel ``(B, 1, n_mels, T)`` log-mel.

    Args:
        channels: Output channels of each block.
        strides: ``(frequency, time)`` stride of each block.
        n_mels: Mel bands of the input.

    Returns:
        ``(blocks, width)``: the blocks, and the width of their output per time step once
        channels and the remaining frequency bins are flattened (see :func:`frames_first`).
    """
    blocks = []
    in_channels, freq = 1, n_mels
    for out_channels, stride in zip(channels, strides, strict=True):
        blocks.append(ConvBlock(in_channels, out_channels, stride))
        in_channels, freq = out_channels, math.ceil(freq / stride[0])
    return nn.Sequential(*blocks), in_channels * freq


def frames_first(x: torch.Tensor) -> torch.Tensor:
    """Conv output as one flattened vector per time step.

    Flattening channels with frequency keeps absolute frequency position (band limiting,
    hum, pitch and timbre) visible to what follows.

    Args:
        x: ``(B, C, F, T)``.

    Returns:
        ``(B, T, C * F)``.
    """
    return x.permute(0, 3, 1, 2).flatten(2)


def strided_lengths(lengths: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    """Valid time steps after convolutions of kernel 3 and padding 1 with these time strides.

    Args:
        lengths: ``(B,)`` valid input steps.
        strides: Time stride of each convolution.

    Returns:
        ``(B,)`` valid output steps (``ceil(in / stride)`` per convolution).
    """
    for stride in strides:
        lengths = torch.div(lengths + stride - 1, stride, rounding_mode="floor")
    return lengths

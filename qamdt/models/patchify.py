"""Cutting a latent into (possibly overlapping) patches and putting it back together.

The latent is ``[B, C, T, F]`` (time x frequency). A patch covers ``p_t x p_f`` cells and
patches start every ``s = p - o`` cells, where ``o`` is the overlap. The number of patches
along an axis of length ``L`` is ``floor((L - p) / s) + 1`` (the paper's eq. 3), after the
axis is padded at its end so that the last patch ends exactly on the border. On the way
back, overlapping contributions are summed and divided by how many patches cover each cell,
so ``unpatchify(patchify(x)) == x`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from qamdt.errors import ConfigError


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise ConfigError(f"{name}: expected one integer or two (time, frequency), got {value}")
    return values


class Patcher:
    """Patchify and unpatchify for one patch size and overlap.

    Args:
        patch_size: ``(p_t, p_f)`` cells per patch along time and frequency.
        overlap: ``(o_t, o_f)`` cells shared by neighbouring patches, each ``< p``.
    """

    def __init__(self, patch_size: int | Sequence[int], overlap: int | Sequence[int] = 0):
        self.patch_size = _pair(patch_size, "patch_size")
        self.overlap = _pair(overlap, "patch_overlap")
        for p, o in zip(self.patch_size, self.overlap, strict=True):
            if p < 1 or not 0 <= o < p:
                raise ConfigError(
                    f"patch_size {self.patch_size} / patch_overlap {self.overlap}: need "
                    "patch >= 1 and 0 <= overlap < patch on both axes"
                )
        self.stride = tuple(p - o for p, o in zip(self.patch_size, self.overlap, strict=True))

    def padded_size(self, time: int, freq: int) -> tuple[int, int]:
        """Axis lengths after end padding so that the patches tile them exactly."""
        sizes = []
        for length, p, s in zip((time, freq), self.patch_size, self.stride, strict=True):
            if length < 1:
                raise ConfigError(f"cannot patchify an axis of length {length}")
            sizes.append(p + s * max(0, math.ceil((length - p) / s)))
        return sizes[0], sizes[1]

    def grid(self, time: int, freq: int) -> tuple[int, int]:
        """Patches along time and frequency: ``floor((L_pad - p) / s) + 1`` per axis."""
        padded = self.padded_size(time, freq)
        return tuple(  # type: ignore[return-value]
            (length - p) // s + 1
            for length, p, s in zip(padded, self.patch_size, self.stride, strict=True)
        )

    def num_tokens(self, time: int, freq: int) -> int:
        """Number of patches of a ``time x freq`` latent."""
        grid_t, grid_f = self.grid(time, freq)
        return grid_t * grid_f

    def patch_dim(self, channels: int) -> int:
        """Values in one flattened patch."""
        return channels * self.patch_size[0] * self.patch_size[1]

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, F]`` -> ``[B, N, C * p_t * p_f]``, patches in time-major order."""
        time, freq = latents.shape[-2:]
        padded_t, padded_f = self.padded_size(time, freq)
        if (padded_t, padded_f) != (time, freq):
            latents = F.pad(latents, (0, padded_f - freq, 0, padded_t - time))
        columns = F.unfold(latents, kernel_size=self.patch_size, stride=self.stride)
        return columns.transpose(1, 2)

    def unpatchify(self, tokens: torch.Tensor, time: int, freq: int) -> torch.Tensor:
        """``[B, N, C * p_t * p_f]`` -> ``[B, C, T, F]``, averaging overlapping patches."""
        padded = self.padded_size(time, freq)
        columns = tokens.transpose(1, 2)
        summed = F.fold(
            columns, output_size=padded, kernel_size=self.patch_size, stride=self.stride
        )
        if self.overlap != (0, 0):
            ones = torch.ones(
                1, columns.shape[1], columns.shape[2], dtype=tokens.dtype, device=tokens.device
            )
            coverage = F.fold(
                ones, output_size=padded, kernel_size=self.patch_size, stride=self.stride
            )
            summed = summed / coverage
        return summed[..., :time, :freq]

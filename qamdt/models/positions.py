"""Position information of the patch grid: fixed 2D sin-cos tables and 2D rotary embeddings.

Both are computed for whatever grid a latent has, so one model handles any clip length.
The quality token sits in front of the patches and has no position: it gets no sin-cos
vector and an identity rotation.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_2d_rotary_pos_embed


def _uncached_when_compiling(table):
    # Dynamo cannot keep a cache's entries: it traces the function inside (and warns).
    # Traced, a table is made of constants in the graph.
    return table.__wrapped__ if torch.compiler.is_compiling() else table


@functools.lru_cache(maxsize=16)
def _sincos_table(
    dim: int, grid_t: int, grid_f: int, scales: tuple[float, float], freq_first: bool
) -> torch.Tensor:
    time, freq = torch.meshgrid(
        torch.arange(grid_t, dtype=torch.float64) * scales[0],
        torch.arange(grid_f, dtype=torch.float64) * scales[1],
        indexing="ij",
    )
    axes = (freq, time) if freq_first else (time, freq)
    halves = [
        get_1d_sincos_pos_embed_from_grid(dim // 2, axis.reshape(-1), output_type="pt")
        for axis in axes
    ]
    return torch.cat(halves, dim=1).float()


def sincos_2d(
    dim: int,
    grid: tuple[int, int],
    device=None,
    dtype=None,
    scales: tuple[float, float] = (1.0, 1.0),
    freq_first: bool = False,
) -> torch.Tensor:
    """Fixed 2D sin-cos position vectors of a ``grid_t x grid_f`` patch grid.

    Each half of the width is a 1-D table (sines, then cosines) of one axis's positions.

    Args:
        dim: Vector width (divisible by 4).
        grid: Patches along time and frequency.
        device: Where to put the table.
        dtype: Its dtype.
        scales: Factors on the integer time and frequency positions (the released model
            uses ``base / grid``: 2 and 8 for its 64 x 16 grid).
        freq_first: Put the frequency half first (the released layout); else time first.

    Returns:
        ``[grid_t * grid_f, dim]`` in the patches' time-major order.
    """
    scales = (float(scales[0]), float(scales[1]))
    table = _uncached_when_compiling(_sincos_table)(dim, grid[0], grid[1], scales, freq_first)
    return table.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _rope_table(head_dim: int, grid_t: int, grid_f: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Integer positions 0..n-1 along each axis; half of each head rotates with time, half
    # with frequency.
    cos, sin = get_2d_rotary_pos_embed(
        head_dim, ((0, 0), (grid_t, grid_f)), (grid_t, grid_f), use_real=True
    )
    return cos.float(), sin.float()


def rope_2d(head_dim: int, grid: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """2D rotary tables ``(cos, sin)``, each ``[grid_t * grid_f, head_dim]``, time-major."""
    cos, sin = _uncached_when_compiling(_rope_table)(head_dim, grid[0], grid[1])
    return cos.to(device), sin.to(device)


def with_identity_prefix(
    cos: torch.Tensor, sin: torch.Tensor, count: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepends ``count`` unrotated positions (cos 1, sin 0) along the sequence axis."""
    shape = (*cos.shape[:-2], count, cos.shape[-1])
    return (
        torch.cat([cos.new_ones(shape), cos], dim=-2),
        torch.cat([sin.new_zeros(shape), sin], dim=-2),
    )


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates query or key vectors.

    Args:
        x: ``[B, heads, S, head_dim]``.
        cos: ``[S, head_dim]`` or per sample ``[B, S, head_dim]`` (kept tokens differ per
            sample when the sequence is masked).
        sin: Same shape as ``cos``.

    Returns:
        The rotated ``x``, same dtype.
    """
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    real, imag = x.float().reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    return (x.float() * cos + rotated * sin).to(x.dtype)

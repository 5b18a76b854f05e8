"""Masks and pooling over time for padded ``(B, T, D)`` sequences."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of a padded sequence.

    Args:
        x: ``(B, T, D)``.
        mask: ``(B, T)``, True at valid steps; ``None`` means all are valid.

    Returns:
        ``(B, D)``.
    """
    if mask is None:
        return x.mean(dim=1)
    weight = mask.to(x.dtype).unsqueeze(-1)
    return (x * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


def stats_pool(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean and standard deviation over time (statistics pooling).

    Args:
        x: ``(B, T, D)``.
        mask: ``(B, T)``, True at valid steps; ``None`` means all are valid.

    Returns:
        ``(B, 2 * D)``: the means, then the standard deviations.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean.unsqueeze(1)).square(), mask)
    # The epsilon keeps the gradient of sqrt finite for a constant (e.g. one-step) sequence.
    return torch.cat([mean, torch.sqrt(var + 1e-5)], dim=-1)


def lengths_to_mask(lengths: torch.Tensor | None, max_len: int) -> torch.Tensor | None:
    """Boolean ``(B, max_len)`` mask of the first ``lengths[b]`` steps, or ``None``.

    Args:
        lengths: ``(B,)`` valid steps per row, or ``None``.
        max_len: Sequence length.

    Returns:
        The mask, or ``None`` when ``lengths`` is ``None``.
    """
    if lengths is None:
        return None
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.clamp(1, max_len).unsqueeze(1)

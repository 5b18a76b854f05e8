"""Condition dropping for classifier-free guidance, decided per sample."""

from __future__ import annotations

import torch

from qamdt.quality import NULL_LEVEL as NULL_QUALITY


def drop_conditions(
    captions: list[str],
    quality_levels: torch.Tensor,
    text_drop: float,
    quality_drop: float,
    generator: torch.Generator | None = None,
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replaces captions by "" and levels by the null level, each with its own probability.

    The two draws are independent, so the model also learns each condition alone.

    Args:
        captions: Captions of the batch (quality prefix included).
        quality_levels: ``[B]`` integer levels.
        text_drop: Probability of dropping a caption.
        quality_drop: Probability of dropping a level.
        generator: Seeds the draws (CPU generator).

    Returns:
        ``(captions, levels, text_dropped, quality_dropped)``; the last two are ``[B]`` bool.
    """
    batch = len(captions)
    draws = torch.rand(2, batch, generator=generator)
    text_dropped = draws[0] < text_drop
    quality_dropped = draws[1] < quality_drop
    captions = [
        "" if drop else caption
        for caption, drop in zip(captions, text_dropped.tolist(), strict=True)
    ]
    levels = quality_levels.clone()
    levels[quality_dropped.to(levels.device)] = NULL_QUALITY
    return captions, levels, text_dropped, quality_dropped

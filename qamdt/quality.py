"""The quality vocabulary shared by labelling, training and generation.

A clip's p-MOS becomes a quality level 1-5 (``mos_predictor.stats``) and a text prefix;
training conditions the transformer on both, and generation asks for a level and puts the
level's prefix in front of the prompt. Level 0 is the null level: the learned embedding
used when the quality is dropped (classifier-free guidance) or unknown.
"""

from __future__ import annotations

LEVELS = (1, 2, 3, 4, 5)
"""The quality levels, lowest first."""

NUM_LEVELS = len(LEVELS)

NULL_LEVEL = 0
"""The level index of "no quality given"."""

PREFIXES = ("low quality", "medium quality", "high quality")
"""The text prefixes, lowest quality first."""

LOW_QUALITY = PREFIXES[0]

DEFAULT_LEVEL_PREFIXES = {
    1: "low quality",
    2: "low quality",
    3: "medium quality",
    4: "high quality",
    5: "high quality",
}
"""Level -> prefix when a model's training data does not say otherwise."""

QUALITY_STATS_NAME = "quality_stats.json"
"""File name of the p-MOS statistics, beside a manifest and inside a pipeline folder."""


def with_prefix(caption: str | None, prefix: str | None) -> str:
    """Prepend a quality prefix to a caption, the way training reads captions.

    Args:
        caption: The caption; None or blank gives just the prefix.
        prefix: The quality prefix; None or empty gives the caption unchanged.

    Returns:
        ``"<prefix>, <caption>"``.
    """
    caption = caption or ""
    if not prefix:
        return caption
    if not caption.strip():
        return prefix
    return f"{prefix}, {caption}"

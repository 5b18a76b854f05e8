"""A parametric family of real-world degradations with a simulated reference quality.

``effects`` holds the signal-processing kinds, ``codecs`` the real lossy codecs (Debian's
lame, vorbis-tools and opus-tools) and ``family`` the registry, chains and the
reference-quality model ``Q = 1 + (Q0 - 1) * prod(1 - s_k)``.
"""

from .family import (
    CHAIN_ORDER,
    CODEC_KINDS,
    KINDS,
    ChainSettings,
    apply_chain,
    check_kinds,
    draw_chain,
    reference_quality,
)

__all__ = [
    "CHAIN_ORDER",
    "CODEC_KINDS",
    "KINDS",
    "ChainSettings",
    "apply_chain",
    "check_kinds",
    "draw_chain",
    "reference_quality",
]

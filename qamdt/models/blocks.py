"""The parts of :class:`~qamdt.models.transformer.QualityMDTTransformer` it repeats or carries.

``MDTBlock`` (self-attention, cross-attention to the text, MLP, all modulated by the
timestep through adaLN-single), ``QualityEmbedding`` (levels 1..5 and the null level,
float levels mixing neighbours) and ``CallConditioning`` (what a sampling call's steps
share, computed once).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from qamdt.errors import ConfigError
from qamdt.models.attention import CrossAttention, SelfAttention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The adaLN modulation ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


class MDTBlock(nn.Module):
    """Self-attention, cross-attention to text, MLP; adaLN-single modulation.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        long_skip: Whether the block takes a long skip from an earlier block (joined by a
            linear layer over the concatenation, as in U-ViT).
        backend: Attention backend.
        cross_attention_norm: Layer norm before cross-attention (the released model has
            none).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        long_skip: bool,
        backend: str,
        cross_attention_norm: bool = True,
    ):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if long_skip else None
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, backend)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if cross_attention_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, backend)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        # Per-block table added to the shared timestep projection (PixArt's adaLN-single).
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time_mod: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        skip: torch.Tensor | None = None,
        text_key_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One block over ``x`` ``[B, S, dim]``; ``time_mod`` is ``[B, 6, dim]``.

        ``text_key_values``: the cross-attention's keys and values of ``text``, when
        computed beforehand (:meth:`QualityMDTTransformer.prepare_conditioning`).
        """
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + time_mod
        ).chunk(6, dim=1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + self.cross_attn(self.norm_cross(x), text, text_mask, text_key_values)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class QualityEmbedding(nn.Module):
    """Embedding of quality levels 1..L plus the null level 0.

    A float level between two integers (the paper's interpolative control) mixes the two
    neighbouring embeddings linearly; 0 is the null level.
    """

    def __init__(self, num_levels: int, dim: int):
        super().__init__()
        self.num_levels = num_levels
        self.table = nn.Embedding(num_levels + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        """``levels`` ``[B]`` (int, or float in [1, L] or exactly 0) -> ``[B, dim]``."""
        # The range check reads values back (a host sync, a graph break), so compiled
        # code skips it: sampling checks the levels once before its loop, training takes
        # the manifest's labels.
        if not torch.compiler.is_compiling():
            below = (levels < 1) & (levels != 0) if levels.is_floating_point() else levels < 0
            if bool((below | (levels > self.num_levels)).any()):
                raise ConfigError(
                    f"quality level out of range: {levels.tolist()}; use 1..{self.num_levels} "
                    "or 0 for none"
                )
        if not levels.is_floating_point():
            return self.table(levels)
        lower = levels.floor().long()
        upper = levels.ceil().long()
        weight = (levels - lower.to(levels.dtype))[:, None]
        mixed = self.table(lower) * (1 - weight) + self.table(upper) * weight
        return mixed.to(self.table.weight.dtype)


@dataclasses.dataclass
class CallConditioning:
    """The inputs of a sampling call that every step shares, computed once.

    Made by :meth:`QualityMDTTransformer.prepare_conditioning` and passed to the
    transformer's ``forward`` as ``conditioning=``: the projected text, its fixed mask,
    the quality embedding, the cross-attention keys and values of every encoder and
    decoder block, and (filled at the first step) the position tables of the latent's grid
    on its device. The outputs equal those of the uncached call.

    Attributes:
        text: Projected text states ``[B, L, hidden]``.
        text_mask: ``[B, L]`` bool (a row without real token sees its first), or None.
        quality: Quality embeddings ``[B, 1, hidden]``.
        encoder_key_values: Keys and values ``[B, heads, L, head_dim]`` per encoder block.
        decoder_key_values: The same per decoder block.
        positions: Patch grid -> ``(position, decoder_position, rope, full_rope)``;
            filled before the steps (never inside ``forward``, which may run as a
            compiled graph).
    """

    text: torch.Tensor
    text_mask: torch.Tensor | None
    quality: torch.Tensor
    encoder_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    decoder_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    positions: dict = dataclasses.field(default_factory=dict)

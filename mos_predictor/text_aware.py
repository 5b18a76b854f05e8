"""Text-aware MOS model after WhisQ (Emon et al. 2025): OMQ and TA with co-attention and OT.

The audio sequence (the embedded CNN's or an SSL encoder's hidden states) and the caption's
token sequence (a transformers text encoder, the bundled all-MiniLM-L6-v2 by default) are
projected to a common width. Bidirectional co-attention lets audio attend to text and
text to audio (multi-head attention with a residual and layer norm). Overall quality
(OMQ) is predicted from the pooled co-attended audio, text alignment (TA) from the pooled
co-attended audio and text together. A Sinkhorn optimal-transport cost between the two
projected sequences is returned as ``aux_loss`` (weight ``ot_weight``), pulling them into
one embedding space.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mos_predictor.base import MosModel, MosOutput, ScoreHead, register_mos_model
from mos_predictor.config import MosModelConfig
from mos_predictor.embedded import MelCnnEncoder
from mos_predictor.sinkhorn import sinkhorn_distance
from mos_predictor.ssl import SslEncoder
from qamdt.modules.pooling import masked_mean
from qamdt.transformers_loading import (
    config_to_dict,
    default_text_model_path,
    load_text_tokenizer,
    load_transformers_model,
)

TOKENIZER_DIR = "tokenizer"


class CoAttention(nn.Module):
    """One direction of co-attention: queries attend to a context, residual and layer norm.

    Args:
        dim: Width of both sequences.
        n_heads: Attention heads.
        dropout: Attention and residual dropout.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, query: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attends.

        Args:
            query: ``(B, N, D)``.
            context: ``(B, M, D)``.
            context_mask: ``(B, M)`` True at valid context steps, or ``None``.

        Returns:
            ``(B, N, D)``.
        """
        padding = None if context_mask is None else ~context_mask
        attended, _ = self.attn(
            query, context, context, key_padding_mask=padding, need_weights=False
        )
        return self.norm(query + self.dropout(attended))


@register_mos_model("text-aware")
class TextAwareMosModel(MosModel):
    """Audio and text encoders with bidirectional co-attention and a Sinkhorn OT term.

    Args:
        config: Hyperparameters; ``kind`` must be ``"text-aware"``.
        load_pretrained: Load pretrained encoders from the folders the config names
            (``from_pretrained`` passes False and loads the saved weights instead).
        asset_dir: A saved model folder; its ``tokenizer`` subfolder is used when present.

    Raises:
        ConfigError: If an encoder or the tokenizer cannot be loaded, or the tokenizer's
            vocabulary does not fit the text encoder.
    """

    def __init__(
        self,
        config: MosModelConfig,
        *,
        load_pretrained: bool = True,
        asset_dir: str | os.PathLike | None = None,
    ):
        super().__init__(config, load_pretrained=load_pretrained, asset_dir=asset_dir)
        if config.audio_encoder == "ssl":
            self.audio_encoder: nn.Module = SslEncoder(config, load_pretrained)
        else:
            self.audio_encoder = MelCnnEncoder(config)
        text_path = config.text_model
        if text_path is None and config.text_config is None:
            text_path = default_text_model_path()
        self.text_encoder = load_transformers_model(
            text_path, config.text_config, "bert", "text_model", load_pretrained
        )
        self.tokenizer = self._load_tokenizer(asset_dir, text_path)

        d = config.d_model
        self.audio_proj = nn.Linear(self.audio_encoder.out_dim, d)
        self.text_proj = nn.Linear(int(self.text_encoder.config.hidden_size), d)
        self.audio_to_text = CoAttention(d, config.n_heads, config.dropout)
        self.text_to_audio = CoAttention(d, config.n_heads, config.dropout)
        self.omq_head = ScoreHead(d, config.head_hidden, config.dropout)
        # Pooled audio, pooled text and their product: the product makes agreement
        # between the two easy to read off.
        self.ta_head = ScoreHead(3 * d, config.head_hidden, config.dropout)
        self._freeze()

    def _load_tokenizer(self, asset_dir, text_path):
        if asset_dir is not None and (Path(asset_dir) / TOKENIZER_DIR).is_dir():
            source = Path(asset_dir) / TOKENIZER_DIR
        else:
            source = self.config.text_tokenizer or text_path or default_text_model_path()
        return load_text_tokenizer(source, self.text_encoder)

    def frozen_modules(self) -> list[nn.Module]:
        """The text encoder (``freeze_text_encoder``) and the audio encoder (``freeze_encoder``)."""
        modules = []
        if self.config.freeze_text_encoder:
            modules.append(self.text_encoder)
        if self.config.freeze_encoder:
            modules.append(self.audio_encoder)
        return modules

    def config_for_saving(self) -> MosModelConfig:
        """The config with the encoders' configs filled in, so it rebuilds offline."""
        config = super().config_for_saving()
        config.text_config = config_to_dict(self.text_encoder.config)
        if isinstance(self.audio_encoder, SslEncoder):
            config.ssl_config = config_to_dict(self.audio_encoder.model.config)
        return config

    def save_assets(self, directory: Path) -> None:
        """Writes the tokenizer to ``directory/tokenizer``."""
        self.tokenizer.save_pretrained(os.fspath(Path(directory) / TOKENIZER_DIR))

    def encode_text(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states of the captions.

        Args:
            texts: Captions; ``None`` means the empty caption.

        Returns:
            ``(states, mask)``: ``(B, L, H)`` last hidden states and the ``(B, L)`` boolean
            mask of real tokens.
        """
        batch = self.tokenizer(
            ["" if t is None else str(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.config.max_text_tokens,
            return_tensors="pt",
        )
        device = self.text_proj.weight.device
        batch = {k: v.to(device) for k, v in batch.items()}
        frozen = not any(p.requires_grad for p in self.text_encoder.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():
            states = self.text_encoder(**batch).last_hidden_state
        return states, batch["attention_mask"].bool()

    def forward(
        self,
        waveforms: torch.Tensor,
        texts: Sequence[str | None] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> MosOutput:
        """Scores a batch of windows against their captions.

        Args:
            waveforms: ``(B, S)`` mono, normalised audio at ``config.sample_rate``.
            texts: ``B`` captions; ``None`` (or ``None`` entries) means empty captions.
            lengths: ``(B,)`` valid samples per row, or ``None``.

        Returns:
            ``omq`` and ``ta`` of shape ``(B,)``; ``aux_loss`` is ``ot_weight`` times the
            batch-mean Sinkhorn cost, or ``None`` when ``ot_weight`` is 0.

        Raises:
            ValueError: If the number of texts differs from the batch size.
        """
        batch = waveforms.shape[0]
        if texts is None:
            texts = [""] * batch
        if len(texts) != batch:
            raise ValueError(f"got {len(texts)} texts for a batch of {batch} waveforms")
        audio, audio_mask = self.audio_encoder(waveforms, lengths)
        text, text_mask = self.encode_text(texts)
        audio = self.audio_proj(audio)
        text = self.text_proj(text)

        audio_co = self.audio_to_text(audio, text, text_mask)
        text_co = self.text_to_audio(text, audio, audio_mask)
        pooled_audio = masked_mean(audio_co, audio_mask)
        pooled_text = masked_mean(text_co, text_mask)
        omq = self.scale_omq(self.omq_head(pooled_audio))
        pair = torch.cat([pooled_audio, pooled_text, pooled_audio * pooled_text], dim=-1)
        ta = self.scale_ta(self.ta_head(pair))

        aux = None
        if self.config.ot_weight > 0:
            cost = sinkhorn_distance(
                audio, text, audio_mask, text_mask, self.config.ot_epsilon, self.config.ot_iters
            )
            aux = self.config.ot_weight * cost.mean()
        return MosOutput(omq=omq, ta=ta, aux_loss=aux)

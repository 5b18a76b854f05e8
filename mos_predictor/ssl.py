"""The SSL MOS model of Ragano et al. (2023), QA-MDT's p-MOS labeller.

A self-supervised speech/audio encoder with the wav2vec 2.0 interface (transformers
``Wav2Vec2Model``, or any ``AutoModel`` that takes raw 16 kHz audio and returns
``last_hidden_state``), mean pooling over time and a linear head. The encoder comes from a
local folder (``config.ssl_model``) or is built randomly from ``config.ssl_config``; saving
stores the encoder's config so a saved model rebuilds without the original folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from mos_predictor.base import MosModel, MosOutput, ScoreHead, register_mos_model
from mos_predictor.config import MosModelConfig
from qamdt.errors import ConfigError
from qamdt.modules.pooling import lengths_to_mask, masked_mean, stats_pool
from qamdt.transformers_loading import config_to_dict, load_transformers_model


class SslEncoder(nn.Module):
    """Raw audio to a ``(B, T, H)`` sequence of an SSL encoder's hidden states.

    Args:
        config: Uses ``ssl_model``, ``ssl_config`` and ``ssl_layer``.
        load_pretrained: Load the weights of ``ssl_model`` (see
            :func:`load_transformers_model`).

    Raises:
        ConfigError: If the encoder cannot be built or ``ssl_layer`` is out of range.
    """

    def __init__(self, config: MosModelConfig, load_pretrained: bool = True):
        super().__init__()
        self.model = load_transformers_model(
            config.ssl_model, config.ssl_config, "wav2vec2", "ssl_model", load_pretrained
        )
        n_layers = int(getattr(self.model.config, "num_hidden_layers", 0))
        self.layer = config.ssl_layer
        if self.layer is not None and not -(n_layers + 1) <= self.layer <= n_layers:
            raise ConfigError(
                f"ssl_layer {self.layer} is out of range; the encoder has hidden states "
                f"0..{n_layers}"
            )
        self.out_dim = int(self.model.config.hidden_size)
        if (self.layer is not None or config.distill_layers) and hasattr(
            self.model.config, "layerdrop"
        ):
            # A dropped layer leaves no hidden state, which would shift the layer indices.
            self.model.config.layerdrop = 0.0

    def frame_lengths(self, lengths: torch.Tensor, n_samples: int, n_frames: int) -> torch.Tensor:
        """Valid output frames for inputs of ``lengths`` valid samples.

        Args:
            lengths: ``(B,)`` sample counts.
            n_samples: Padded input length.
            n_frames: Output frames of the padded input.

        Returns:
            ``(B,)`` frame counts, at least 1.
        """
        if hasattr(self.model, "_get_feat_extract_output_lengths"):
            frames = self.model._get_feat_extract_output_lengths(lengths)
        else:
            frames = torch.div(lengths * n_frames + n_samples - 1, n_samples, rounding_mode="floor")
        return frames.clamp(1, n_frames)

    def attention_mask(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The sample-level mask to pass to the encoder for padded rows, or ``None``."""
        # Encoders with group norm in the feature extractor (wav2vec2-base) were trained on
        # zero-padded batches without a mask, and transformers recommends not passing one.
        if lengths is None or getattr(self.model.config, "feat_extract_norm", "layer") == "group":
            return None
        return lengths_to_mask(lengths, waveforms.shape[1]).long()

    def encode(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor | None = None,
        all_hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """Encodes a batch, optionally returning every layer's hidden states.

        Args:
            waveforms: ``(B, S)`` normalised 16 kHz audio.
            lengths: ``(B,)`` valid samples per row, or ``None``.
            all_hidden: Also return all hidden states (for self-distillation).

        Returns:
            ``(sequence, mask, hidden_states)``: the chosen layer's ``(B, T, H)`` states, a
            ``(B, T)`` validity mask (``None`` when ``lengths`` is ``None``) and, with
            ``all_hidden``, the ``num_hidden_layers + 1`` hidden states (else ``None``).
        """
        frozen = not any(p.requires_grad for p in self.model.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():
            out = self.model(
                waveforms,
                attention_mask=self.attention_mask(waveforms, lengths),
                output_hidden_states=all_hidden or self.layer is not None,
            )
        sequence = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        mask = None
        if lengths is not None:
            frames = self.frame_lengths(lengths, waveforms.shape[1], sequence.shape[1])
            mask = lengths_to_mask(frames, sequence.shape[1])
        return sequence, mask, (out.hidden_states if all_hidden else None)

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodes a batch.

        Args:
            waveforms: ``(B, S)`` normalised 16 kHz audio.
            lengths: ``(B,)`` valid samples per row, or ``None``.

        Returns:
            ``(sequence, mask)``: the chosen layer's ``(B, T, H)`` states and a ``(B, T)``
            validity mask (``None`` when ``lengths`` is ``None``).
        """
        return self.encode(waveforms, lengths)[:2]


@register_mos_model("ssl")
class SslMosModel(MosModel):
    """SSL encoder, mean pooling over time and a linear head (Ragano et al. 2023).

    Args:
        config: Hyperparameters; ``kind`` must be ``"ssl"``.
        load_pretrained: Load ``config.ssl_model``'s weights (``from_pretrained`` passes
            False and loads the saved weights instead).
        asset_dir: Unused.
    """

    def __init__(self, config: MosModelConfig, *, load_pretrained: bool = True, asset_dir=None):
        super().__init__(config, load_pretrained=load_pretrained, asset_dir=asset_dir)
        self.encoder = SslEncoder(config, load_pretrained)
        width = self.encoder.out_dim * (2 if config.pooling == "stats" else 1)
        self.head = ScoreHead(width, config.head_hidden, config.dropout)
        self.distill = None
        if config.distill_layers:
            from mos_predictor.distill import LayerDistillation

            # Built now, from the pretrained weights, before any fine-tuning changes them.
            self.distill = LayerDistillation(self.encoder.model, config)
        self._freeze()

    def frozen_modules(self) -> list[nn.Module]:
        """The encoder when ``freeze_encoder`` is set, and the distillation teacher."""
        modules = [self.encoder] if self.config.freeze_encoder else []
        if self.distill is not None:
            modules.append(self.distill.teacher)
        return modules

    def config_for_saving(self) -> MosModelConfig:
        """The config with ``ssl_config`` set to the encoder's, so it rebuilds offline."""
        config = super().config_for_saving()
        config.ssl_config = config_to_dict(self.encoder.model.config)
        return config

    def encode(self, waveforms: torch.Tensor) -> torch.Tensor:
        """The pooled layer's hidden states.

        Args:
            waveforms: ``(B, S)`` normalised 16 kHz audio.

        Returns:
            ``(B, T, H)``.
        """
        return self.encoder(waveforms)[0]

    def forward(
        self,
        waveforms: torch.Tensor,
        texts: Sequence[str | None] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> MosOutput:
        """Scores a batch of windows.

        Args:
            waveforms: ``(B, S)`` mono, normalised 16 kHz audio.
            texts: Ignored.
            lengths: ``(B,)`` valid samples per row, or ``None``.

        Returns:
            ``omq`` of shape ``(B,)``; ``ta`` is ``None``; ``aux_loss`` is the weighted
            distillation loss in training mode when ``distill_layers`` and
            ``distill_weight`` are set, else ``None``.

        Raises:
            RuntimeError: When distilling before ``fit_distillation_targets`` was run.
        """
        distilling = self.distill is not None and self.training and self.config.distill_weight > 0
        sequence, mask, hidden = self.encoder.encode(waveforms, lengths, all_hidden=distilling)
        pooled = (
            stats_pool(sequence, mask)
            if self.config.pooling == "stats"
            else masked_mean(sequence, mask)
        )
        aux = None
        if distilling:
            teacher = self.distill.teacher_states(
                waveforms, self.encoder.attention_mask(waveforms, lengths)
            )
            aux = self.config.distill_weight * self.distill.loss(hidden, teacher, mask)
        return MosOutput(omq=self.scale_omq(self.head(pooled)), aux_loss=aux)

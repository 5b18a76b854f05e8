"""The embedded MOS model: log-mel, a small 2-D CNN, statistics pooling, a score head.

It trains from scratch on a CPU in minutes. Design choices that matter for quality cues:

* The mel bands reach the Nyquist frequency (11.025 kHz), not the vocoder's 8 kHz: band
  limiting and quantisation aliasing show up there.
* The log-mel goes through a fixed affine (``mel_mean``, ``mel_std``), not per-clip
  standardisation: the level of the noise floor against the music (noise, quantisation,
  hum) is exactly what per-clip statistics would erase. The waveform itself is peak
  normalised by the caller, as for every model here; ``level_norm: rms`` also scales
  each window to one RMS (one gain per window, so levels inside it survive).
* The conv stack down-samples frequency and time, then the channels and the remaining
  frequency bins are flattened and projected per time step, so absolute frequency
  position survives (band limiting, hum at 50/60 Hz).
* Statistics pooling (mean and standard deviation over time) lets the head see how
  steady or bursty a cue is (crackle, clipping on peaks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from mos_predictor.base import MosModel, MosOutput, ScoreHead, register_mos_model
from mos_predictor.config import LEVEL_NORM_RMS, MosModelConfig
from qamdt.audio_spec import get_audio_spec
from qamdt.mel import MelFrontEnd
from qamdt.modules.conv import conv_stack, frames_first, strided_lengths
from qamdt.modules.pooling import lengths_to_mask, masked_mean, stats_pool


class MelCnnEncoder(nn.Module):
    """Waveform to a ``(B, T, D)`` sequence: log-mel, fixed affine, conv blocks, projection.

    Args:
        config: Uses ``mel_preset``, ``mel_mean``, ``mel_std``, ``level_norm``,
            ``cnn_channels``, ``cnn_strides`` and ``embed_dim``.
    """

    def __init__(self, config: MosModelConfig):
        super().__init__()
        spec = get_audio_spec(config.mel_preset)
        fmax = spec.sample_rate / 2 if config.mel_fmax is None else config.mel_fmax
        spec = dataclasses.replace(spec, fmax=float(fmax))
        self.mel = MelFrontEnd(spec)
        self.mel_mean = float(config.mel_mean)
        self.mel_std = float(config.mel_std)
        self.level_norm = config.level_norm
        self.blocks, width = conv_stack(
            config.cnn_channels, config.cnn_strides, self.mel.spec.n_mels
        )
        self.time_strides = [s[1] for s in config.cnn_strides]
        self.proj = nn.Sequential(nn.Linear(width, config.embed_dim), nn.GELU())
        self.out_dim = config.embed_dim
        self.temporal = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.embed_dim,
                nhead=4,
                dim_feedforward=2 * config.embed_dim,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.temporal_layers)
        )

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid output steps for inputs of ``lengths`` valid samples.

        Args:
            lengths: ``(B,)`` sample counts.

        Returns:
            ``(B,)`` step counts, at least 1.
        """
        frames = torch.div(lengths, self.mel.spec.hop_length, rounding_mode="floor").clamp_min(1)
        return strided_lengths(frames, self.time_strides)

    def normalise_level(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The windows as the log-mel sees them (``level_norm``).

        Args:
            waveforms: ``(B, S)`` audio.
            lengths: ``(B,)`` valid samples per row (the RMS ignores the padding), or
                ``None``.

        Returns:
            ``waveforms`` unchanged for ``"none"``; for ``"rms"`` each row times one gain
            that brings its RMS to ``LEVEL_NORM_RMS`` (rows below -100 dBFS RMS are
            scaled as if at -100 dBFS, so silence stays near silent).
        """
        if self.level_norm == "none":
            return waveforms
        power = waveforms.square()
        if lengths is None:
            mean_power = power.mean(dim=1)
        else:
            valid = lengths_to_mask(lengths.clamp_min(1), waveforms.shape[1]).to(power.dtype)
            mean_power = (power * valid).sum(dim=1) / valid.sum(dim=1)
        rms = mean_power.clamp_min(1e-10).sqrt()
        return waveforms * (LEVEL_NORM_RMS / rms)[:, None]

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodes a batch.

        Args:
            waveforms: ``(B, S)`` normalised audio at the mel preset's rate.
            lengths: ``(B,)`` valid samples per row, or ``None``.

        Returns:
            ``(sequence, mask)``: ``(B, T, D)`` and a ``(B, T)`` validity mask (``None``
            when ``lengths`` is ``None``).
        """
        # The log-mel stays float32 under autocast: the quality cues are small differences.
        with torch.autocast(waveforms.device.type, enabled=False):
            mel = self.mel(self.normalise_level(waveforms.float(), lengths))
        x = (mel - self.mel_mean) / self.mel_std
        x = self.blocks(x.unsqueeze(1))  # (B, C, F', T')
        x = self.proj(frames_first(x))  # (B, T', C * F') -> (B, T', D)
        mask = None if lengths is None else lengths_to_mask(self.frame_lengths(lengths), x.shape[1])
        for layer in self.temporal:
            x = layer(x, src_key_padding_mask=None if mask is None else ~mask)
        return x, mask


@register_mos_model("embedded")
class EmbeddedMosModel(MosModel):
    """Log-mel CNN MOS model, trained from scratch (the ``embedded`` preset's p-MOS model).

    Args:
        config: Hyperparameters; ``kind`` must be ``"embedded"``.
        load_pretrained: Unused (nothing pretrained); kept for the shared signature.
        asset_dir: Unused.
    """

    def __init__(self, config: MosModelConfig, *, load_pretrained: bool = True, asset_dir=None):
        super().__init__(config, load_pretrained=load_pretrained, asset_dir=asset_dir)
        self.encoder = MelCnnEncoder(config)
        width = self.encoder.out_dim * (2 if config.pooling == "stats" else 1)
        self.head = ScoreHead(width, config.head_hidden, config.dropout)
        # Training only: naming the damage makes the features describe it.
        self.kind_head = nn.Linear(width, config.kind_outputs) if config.kind_outputs else None
        self._freeze()

    def frozen_modules(self) -> list[nn.Module]:
        """The encoder when ``freeze_encoder`` is set."""
        return [self.encoder] if self.config.freeze_encoder else []

    def encode(self, waveforms: torch.Tensor) -> torch.Tensor:
        """The encoder's output sequence.

        Args:
            waveforms: ``(B, S)`` normalised audio at ``config.sample_rate``.

        Returns:
            ``(B, T, D)``.
        """
        return self.encoder(waveforms)[0]

    def pool(self, sequence: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Pools a sequence over time with the configured pooling."""
        if self.config.pooling == "stats":
            return stats_pool(sequence, mask)
        return masked_mean(sequence, mask)

    def forward(
        self,
        waveforms: torch.Tensor,
        texts: Sequence[str | None] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> MosOutput:
        """Scores a batch of windows.

        Args:
            waveforms: ``(B, S)`` mono, normalised audio at ``config.sample_rate``.
            texts: Ignored.
            lengths: ``(B,)`` valid samples per row, or ``None``.

        Returns:
            ``omq`` of shape ``(B,)`` and, with a kind head, its ``kinds`` logits; ``ta``
            and ``aux_loss`` are ``None``.
        """
        sequence, mask = self.encoder(waveforms, lengths)
        pooled = self.pool(sequence, mask)
        kinds = None if self.kind_head is None else self.kind_head(pooled)
        return MosOutput(omq=self.scale_omq(self.head(pooled)), kinds=kinds)

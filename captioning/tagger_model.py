"""The ``embedded`` captioner's network (:class:`TagNet`) and its settings.

A log-mel CNN with a head per field (see :mod:`captioning.embedded_captioner`): the conv
stack down-samples frequency and time, statistics pooling summarises the valid frames, and
an onset autocorrelation gives the heads the periodicity a mean over time would blur.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from qamdt.audio_spec import get_audio_spec
from qamdt.config import ConfigBase
from qamdt.errors import ConfigError
from qamdt.mel import MelFrontEnd
from qamdt.modules.conv import conv_stack, frames_first, strided_lengths
from qamdt.modules.conv_settings import checked_conv_settings
from qamdt.modules.pooling import lengths_to_mask, stats_pool

KIND = "embedded"
FORMAT_VERSION = 1
# Single-label heads, in the order the sentence uses them.
CLASS_FIELDS: tuple[str, ...] = ("ensemble", "tempo", "mode", "metre", "style")


@dataclasses.dataclass
class EmbeddedCaptionerConfig(ConfigBase):
    """Everything needed to rebuild the captioner; saved as ``config.json``.

    Attributes:
        vocab: Label names of each head: ``instruments``, ``ensemble`` (patterns),
            ``tempo``, ``mode``, ``metre``, ``style``. An empty list drops that head.
        mel_preset: Audio preset of the log-mel front end.
        mel_mean: Fixed shift of the log-mel (set from the training data).
        mel_std: Fixed scale of the log-mel.
        window_seconds: Length of the windows a clip is scored in.
        cnn_channels: Output channels of the conv blocks.
        cnn_strides: ``(frequency, time)`` down-sampling of each block.
        embed_dim: Width of the per-frame projection (pooled to twice this).
        time_pool: Frames averaged together before the conv stack (timbre, harmony and
            style need no 12 ms resolution; the onset autocorrelation keeps full rate).
        tempo_lags_seconds: Longest lag of the onset autocorrelation fed to the heads, which
            gives them the periodicity a mean over time would blur; 0 disables it.
        tempo_dim: Width of the projected autocorrelation.
        dropout: Dropout before the heads.
        predict_bpm: Whether there is a BPM head.
        bpm_log_mean: Mean of log BPM in training (the BPM head predicts z-scores).
        bpm_log_std: Standard deviation of log BPM in training.
        instrument_threshold: Instruments whose probability reaches this are named (at
            least the most probable one always is).
    """

    vocab: dict[str, list[str]]
    mel_preset: str = "embedded"
    mel_mean: float = -4.5
    mel_std: float = 2.5
    window_seconds: float = 5.0
    cnn_channels: tuple[int, ...] = (16, 32, 64, 128)
    cnn_strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2), (2, 1))
    embed_dim: int = 128
    time_pool: int = 2
    tempo_lags_seconds: float = 2.0
    tempo_dim: int = 32
    dropout: float = 0.2
    predict_bpm: bool = True
    bpm_log_mean: float = math.log(90.0)
    bpm_log_std: float = 0.3
    instrument_threshold: float = 0.5

    config_where = "captioner config"
    config_noun = "captioner setting"

    def __post_init__(self):
        self.cnn_channels, self.cnn_strides = checked_conv_settings(
            self.cnn_channels, self.cnn_strides
        )
        heads = ("instruments", *CLASS_FIELDS)
        unknown = sorted(set(self.vocab) - set(heads))
        if unknown:
            raise ConfigError(f"vocab: unknown head(s) {unknown}; known: {list(heads)}")
        self.vocab = {h: [str(v) for v in self.vocab.get(h, [])] for h in heads}
        for head, names in self.vocab.items():
            if len(set(names)) != len(names):
                raise ConfigError(f"vocab.{head}: duplicate labels")
        get_audio_spec(self.mel_preset)
        for name in ("window_seconds", "mel_std", "bpm_log_std"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.instrument_threshold < 1:
            raise ConfigError("instrument_threshold must be in (0, 1)")
        if self.time_pool < 1:
            raise ConfigError(f"time_pool must be >= 1, got {self.time_pool}")
        if self.tempo_lags_seconds < 0:
            raise ConfigError("tempo_lags_seconds must be >= 0")

    @property
    def sample_rate(self) -> int:
        """Rate the network's input audio is at."""
        return get_audio_spec(self.mel_preset).sample_rate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with ``kind`` and ``format_version``."""
        return {"kind": KIND, "format_version": FORMAT_VERSION, **super().to_dict()}

    @classmethod
    def prepare(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """Drops the saved ``kind`` and ``format_version`` after checking them."""
        kind = values.pop("kind", KIND)
        if kind != KIND:
            raise ConfigError(f"{where}: kind: expected {KIND!r}, got {kind!r}")
        version = values.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"{where}: format_version {version} is not supported ({FORMAT_VERSION})"
            )
        return values


class TagNet(nn.Module):
    """Log-mel windows to the logits of every head.

    The conv stack down-samples frequency and time; channels and remaining frequency bins
    are flattened and projected per time step, so absolute pitch and timbre position
    survive; mean and standard deviation over the valid frames pool the sequence.

    Args:
        config: The captioner's configuration.
    """

    def __init__(self, config: EmbeddedCaptionerConfig):
        super().__init__()
        self.config = config
        self.mel = MelFrontEnd(config.mel_preset)
        self.blocks, flat = conv_stack(
            config.cnn_channels, config.cnn_strides, self.mel.spec.n_mels
        )
        self.time_strides = [s[1] for s in config.cnn_strides]
        self.proj = nn.Sequential(nn.Linear(flat, config.embed_dim), nn.GELU())
        width = 2 * config.embed_dim
        self.num_lags = round(config.tempo_lags_seconds * self.mel.spec.frames_per_second)
        if self.num_lags:
            self.tempo_proj = nn.Sequential(nn.Linear(self.num_lags, config.tempo_dim), nn.GELU())
            width += config.tempo_dim
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict(
            {head: nn.Linear(width, len(names)) for head, names in config.vocab.items() if names}
        )
        if config.predict_bpm:
            self.heads["bpm"] = nn.Linear(width, 1)

    def _frame_steps(self, frames: torch.Tensor) -> torch.Tensor:
        pool = self.config.time_pool
        frames = torch.div(frames + pool - 1, pool, rounding_mode="floor")
        return strided_lengths(frames, self.time_strides)

    def _onset_autocorrelation(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Spectral flux of the log-mel, centred over the valid frames, autocorrelated
        # through the FFT and divided by its zero lag.
        flux = torch.relu(x[:, :, 1:] - x[:, :, :-1]).mean(dim=1)
        valid = lengths_to_mask((lengths - 1).clamp_min(1), flux.shape[1]).to(flux.dtype)
        mean = (flux * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True)
        env = (flux - mean) * valid
        size = 2 * env.shape[1]
        spectrum = torch.fft.rfft(env, n=size)
        ac = torch.fft.irfft(spectrum.real.square() + spectrum.imag.square(), n=size)
        ac = ac[:, 1 : self.num_lags + 1] / (ac[:, :1] + 1e-6)
        if ac.shape[1] < self.num_lags:
            ac = nn.functional.pad(ac, (0, self.num_lags - ac.shape[1]))
        return ac

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head.

        Args:
            mels: ``(B, n_mels, T)`` raw log-mels (natural log, from ``self.mel``).
            lengths: ``(B,)`` valid frames per row; later frames are padding.

        Returns:
            Head name to ``(B, classes)`` logits (``(B,)`` for ``bpm``).
        """
        x = (mels - self.config.mel_mean) / self.config.mel_std
        steps = self._frame_steps(lengths)
        h = x.unsqueeze(1)
        if self.config.time_pool > 1:
            pool = self.config.time_pool
            h = nn.functional.avg_pool2d(h, (1, pool), ceil_mode=True)
        h = self.blocks(h)
        h = self.proj(frames_first(h))
        features = [stats_pool(h, lengths_to_mask(steps, h.shape[1]))]
        if self.num_lags:
            features.append(self.tempo_proj(self._onset_autocorrelation(x, lengths)))
        pooled = self.dropout(torch.cat(features, dim=-1))
        out = {head: layer(pooled) for head, layer in self.heads.items()}
        if "bpm" in out:
            out["bpm"] = out["bpm"].squeeze(-1)
        return out

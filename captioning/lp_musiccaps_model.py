"""LP-MusicCaps' network, rebuilt with the released checkpoint's module and buffer names.

See :mod:`captioning.lp_musiccaps` for the released files, the front end's quirks and how
captions are generated. The torchaudio modules of the original are replaced by torch-only
ones with the same buffer names, so loading the released state dict stays strict.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qamdt.errors import ConfigError


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> torch.Tensor:
    """Whisper's sinusoidal position table, ``(length, channels)``: sines then cosines."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, np.newaxis] * inv_timescales[np.newaxis, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


def melscale_fbanks(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int
) -> torch.Tensor:
    """The HTK, unnormalised mel filter bank of torchaudio's ``MelScale``, ``(n_freqs, n_mels)``."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    m_pts = torch.linspace(m_min, m_max, n_mels + 2)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down_slopes, up_slopes))


class Spectrogram(nn.Module):
    """Complex centred STFT, torchaudio ``Spectrogram(power=None)`` with its ``window`` buffer."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, samples)`` -> complex ``(B, n_fft // 2 + 1, frames)``."""
        return torch.stft(
            wav,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )


class MelScale(nn.Module):
    """torchaudio ``MelScale`` (HTK, no norm) with its ``fb`` buffer."""

    def __init__(self, n_mels: int, sample_rate: int, f_min: float, f_max: float, n_stft: int):
        super().__init__()
        self.register_buffer("fb", melscale_fbanks(n_stft, f_min, f_max, n_mels, sample_rate))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """``(B, freq, frames)`` -> ``(B, n_mels, frames)``."""
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


class MelEncoder(nn.Module):
    """LP-MusicCaps' log-mel front end (see the module docstring)."""

    def __init__(
        self,
        sample_rate: int = 16000,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 160,
        n_mels: int = 128,
    ):
        super().__init__()
        self.spec_fn = Spectrogram(n_fft, win_length, hop_length)
        self.mel_scale = MelScale(n_mels, sample_rate, f_min, f_max, n_fft // 2 + 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, samples)`` -> ``(B, n_mels, frames)`` in dB."""
        spec = self.spec_fn(wav)
        # Real part only, as in the released model (not the squared magnitude).
        power_spec = spec.real.abs().pow(2)
        mel_spec = self.mel_scale(power_spec)
        return 10.0 * torch.log10(torch.clamp(mel_spec, min=1e-10))


class AudioEncoder(nn.Module):
    """Log-mel -> conv1 + strided conv stack (GELU) -> + sinusoidal positions."""

    def __init__(
        self,
        n_mels: int,
        n_ctx: int,
        audio_dim: int,
        text_dim: int,
        num_of_stride_conv: int,
        sample_rate: int = 16000,
    ):
        super().__init__()
        if audio_dim != text_dim:
            raise ConfigError(
                f"audio_dim {audio_dim} must equal the BART width {text_dim} (no projection)"
            )
        self.mel_encoder = MelEncoder(
            sample_rate=sample_rate,
            f_max=sample_rate / 2,
            hop_length=int(0.01 * sample_rate),
            n_mels=n_mels,
        )
        self.conv1 = nn.Conv1d(n_mels, audio_dim, kernel_size=3, padding=1)
        self.conv_stack = nn.ModuleList(
            nn.Conv1d(audio_dim, audio_dim, kernel_size=3, stride=2, padding=1)
            for _ in range(num_of_stride_conv)
        )
        self.register_buffer("positional_embedding", sinusoids(n_ctx, text_dim))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, samples)`` -> ``(B, n_ctx, text_dim)``."""
        x = self.mel_encoder(wav)
        x = F.gelu(self.conv1(x))
        for conv in self.conv_stack:
            x = F.gelu(conv(x))
        x = x.permute(0, 2, 1)
        return (x + self.positional_embedding).to(x.dtype)


class BartCaptionModel(nn.Module):
    """LP-MusicCaps' ``BartCaptionModel``: same submodules, parameter and buffer names.

    Args:
        bart_config: A transformers ``BartConfig`` (bart-base for the released weights).
        n_mels: Mel bands (128).
        num_of_conv: Convolutions in the audio front end, the first unstrided (6).
        sr: Sample rate (16000).
        duration: Chunk length in seconds (10).
    """

    def __init__(
        self, bart_config, n_mels: int = 128, num_of_conv: int = 6, sr: int = 16000, duration=10
    ):
        super().__init__()
        from transformers import BartForConditionalGeneration

        self.bart = BartForConditionalGeneration(bart_config)
        self.n_sample = int(sr * duration)
        self.hop_length = int(0.01 * sr)
        self.n_frames = int(self.n_sample // self.hop_length)
        self.num_of_stride_conv = num_of_conv - 1
        self.n_ctx = int(self.n_frames // 2**self.num_of_stride_conv) + 1
        self.audio_encoder = AudioEncoder(
            n_mels=n_mels,
            n_ctx=self.n_ctx,
            audio_dim=bart_config.d_model,
            text_dim=bart_config.d_model,
            num_of_stride_conv=self.num_of_stride_conv,
            sample_rate=sr,
        )

    def encode(self, audio: torch.Tensor):
        """``(B, n_sample)`` chunks -> the BART encoder's output (``last_hidden_state``)."""
        audio_embs = self.audio_encoder(audio)
        return self.bart.model.encoder(inputs_embeds=audio_embs, return_dict=True)

    @torch.no_grad()
    def generate(self, audio: torch.Tensor, generation_config) -> torch.Tensor:
        """Token ids of the captions of ``(B, n_sample)`` chunks."""
        encoder_outputs = self.encode(audio)
        return self.bart.generate(
            encoder_outputs=encoder_outputs, generation_config=generation_config
        )

"""The embedded CLAP model's settings and networks (the scorer is in ``embedded_clap``).

:class:`AudioTower` embeds log-mel windows, :class:`FrozenTextEncoder` turns texts into
sentence features, and :class:`ClapHeads` holds every trained weight: the audio tower, the
text projection and the logit scale.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qamdt.audio_spec import AUDIO_PRESETS
from qamdt.config import ConfigBase
from qamdt.errors import ConfigError
from qamdt.modules.conv import conv_stack, frames_first
from qamdt.modules.conv_settings import checked_conv_settings
from qamdt.transformers_loading import (
    default_text_model_path,
    load_text_tokenizer,
    load_transformers_model,
)

CONFIG_FORMAT_VERSION = 1
POOLINGS = ("stats", "mean")


@dataclasses.dataclass
class EmbeddedClapConfig(ConfigBase):
    """Hyperparameters of the embedded CLAP model.

    Attributes:
        kind: Always ``"embedded"``.
        mel_preset: Audio preset of the log-mel front end; its rate is the model's rate.
        mel_fmax: Upper edge of the mel bands; ``None`` keeps the preset's (8 kHz for
            ``embedded``): content, not band-limiting, should drive the embedding.
        mel_mean: Fixed shift of the log-mel input (natural-log units).
        mel_std: Fixed scale of the log-mel input.
        window_seconds: Length of the windows a clip is cut into (and of training crops).
        cnn_channels: Output channels of the conv blocks.
        cnn_strides: ``(frequency, time)`` stride of each conv block.
        audio_width: Width of the per-time-step projection after the conv blocks.
        pooling: ``"stats"`` (mean and standard deviation over time) or ``"mean"``.
        embed_dim: Width of the shared embedding space.
        text_model: Local folder of a transformers text encoder; ``None`` with no
            ``text_config`` uses the bundled all-MiniLM-L6-v2.
        text_config: Config dict of a randomly initialised text encoder (``model_type``
            defaults to bert), for tests; its weights are saved with the model.
        text_tokenizer: Local tokenizer folder; ``None`` uses ``text_model``'s, or the
            bundled MiniLM tokenizer.
        max_text_tokens: Texts are truncated to this many tokens.
        text_hidden: Hidden width of the text projection; 0 makes it linear.
        dropout: Dropout before both projections.
        init_logit_scale: Initial logit scale (CLIP's ``1 / 0.07``).
        max_logit_scale: The logit scale is clamped at this value (CLIP's 100).
    """

    kind: str = "embedded"
    mel_preset: str = "embedded"
    mel_fmax: float | None = None
    mel_mean: float = -4.5
    mel_std: float = 2.5
    window_seconds: float = 5.0
    cnn_channels: tuple[int, ...] = (32, 64, 128, 128)
    cnn_strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2), (2, 2))
    audio_width: int = 256
    pooling: str = "stats"
    embed_dim: int = 256
    text_model: str | None = None
    text_config: dict[str, Any] | None = None
    text_tokenizer: str | None = None
    max_text_tokens: int = 128
    text_hidden: int = 0
    dropout: float = 0.1
    init_logit_scale: float = 1 / 0.07
    max_logit_scale: float = 100.0

    config_where = "CLAP config"
    config_noun = "CLAP setting"

    def __post_init__(self):
        self.cnn_channels, self.cnn_strides = checked_conv_settings(
            self.cnn_channels, self.cnn_strides
        )
        for name in ("text_model", "text_tokenizer"):
            if getattr(self, name) is not None:
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.kind != "embedded":
            raise ConfigError(f"kind: expected 'embedded', got {self.kind!r}")
        if self.mel_preset not in AUDIO_PRESETS:
            raise ConfigError(
                f"mel_preset: unknown audio preset {self.mel_preset!r}; "
                f"choose one of {sorted(AUDIO_PRESETS)}"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling: unknown value {self.pooling!r}; choose one of {POOLINGS}")
        for name in ("audio_width", "embed_dim", "max_text_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("window_seconds", "mel_std", "init_logit_scale"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_logit_scale < self.init_logit_scale:
            raise ConfigError(
                f"max_logit_scale ({self.max_logit_scale}) must be >= init_logit_scale "
                f"({self.init_logit_scale})"
            )
        if self.text_hidden < 0 or not 0 <= self.dropout < 1:
            raise ConfigError(
                f"need text_hidden >= 0 and 0 <= dropout < 1, got {self.text_hidden} and "
                f"{self.dropout}"
            )
        spec = AUDIO_PRESETS[self.mel_preset]
        if self.mel_fmax is not None and not spec.fmin < self.mel_fmax <= spec.sample_rate / 2:
            raise ConfigError(
                f"mel_fmax must be in ({spec.fmin}, {spec.sample_rate / 2}], got {self.mel_fmax}"
            )
        if self.text_config is not None:
            if not isinstance(self.text_config, Mapping):
                raise ConfigError(
                    f"text_config must be a dict, got {type(self.text_config).__name__}"
                )
            self.text_config = dict(self.text_config)

    @property
    def sample_rate(self) -> int:
        """The model's input rate (the mel preset's)."""
        return AUDIO_PRESETS[self.mel_preset].sample_rate

    @property
    def saves_text_encoder(self) -> bool:
        """Whether the text encoder is built at random from ``text_config`` and so saved."""
        return self.text_model is None and self.text_config is not None

    @classmethod
    def prepare(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """Drops the saved ``format_version`` after checking it."""
        version = values.pop("format_version", CONFIG_FORMAT_VERSION)
        if version != CONFIG_FORMAT_VERSION:
            raise ConfigError(f"{where}: format_version {version} is not supported")
        return values


class AudioTower(nn.Module):
    """Log-mel window to an (unnormalised) embedding: conv blocks, pooling, projection.

    Args:
        config: Uses the mel, CNN, pooling, dropout and width settings.
        n_mels: Number of mel bands of the input.
    """

    def __init__(self, config: EmbeddedClapConfig, n_mels: int):
        super().__init__()
        self.mel_mean = float(config.mel_mean)
        self.mel_std = float(config.mel_std)
        self.pooling = config.pooling
        self.blocks, flat = conv_stack(config.cnn_channels, config.cnn_strides, n_mels)
        self.frame_proj = nn.Sequential(nn.Linear(flat, config.audio_width), nn.GELU())
        pooled = config.audio_width * (2 if config.pooling == "stats" else 1)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(pooled, config.embed_dim))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Embeds a batch of windows of equal length.

        Args:
            log_mel: ``(B, n_mels, frames)`` natural-log mel energies.

        Returns:
            ``(B, embed_dim)``.
        """
        x = (log_mel - self.mel_mean) / self.mel_std
        x = self.blocks(x.unsqueeze(1))  # (B, C, F', T')
        x = self.frame_proj(frames_first(x))  # (B, T', W)
        if self.pooling == "stats":
            # unbiased=False keeps a single remaining time step finite.
            x = torch.cat([x.mean(dim=1), x.std(dim=1, unbiased=False)], dim=-1)
        else:
            x = x.mean(dim=1)
        return self.head(x)


class ClapHeads(nn.Module):
    """The trained part of the model: audio tower, text projection and logit scale.

    Args:
        config: The model's hyperparameters.
        n_mels: Mel bands of the audio input.
        text_width: Width of the frozen text encoder's sentence embedding.
    """

    def __init__(self, config: EmbeddedClapConfig, n_mels: int, text_width: int):
        super().__init__()
        self.audio = AudioTower(config, n_mels)
        layers: list[nn.Module] = [nn.Dropout(config.dropout)]
        if config.text_hidden > 0:
            layers += [
                nn.Linear(text_width, config.text_hidden),
                nn.GELU(),
                nn.Linear(config.text_hidden, config.embed_dim),
            ]
        else:
            layers.append(nn.Linear(text_width, config.embed_dim))
        self.text_proj = nn.Sequential(*layers)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))
        self.max_log_logit_scale = math.log(config.max_logit_scale)

    def logit_scale(self) -> torch.Tensor:
        """The clamped logit scale (a scalar tensor)."""
        return self.log_logit_scale.clamp(max=self.max_log_logit_scale).exp()

    def embed_windows(self, log_mel: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` L2-normalised embeddings of ``(B, n_mels, frames)`` windows."""
        return F.normalize(self.audio(log_mel), dim=-1)

    def embed_sentences(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` L2-normalised embeddings of frozen ``(B, H)`` sentence features."""
        return F.normalize(self.text_proj(features), dim=-1)


class FrozenTextEncoder(nn.Module):
    """A frozen transformers encoder and its tokenizer: texts to sentence features.

    Args:
        config: Uses ``text_model``, ``text_config``, ``text_tokenizer`` and
            ``max_text_tokens``.

    Raises:
        ConfigError: If the encoder or tokenizer cannot be loaded, or the tokenizer's
            vocabulary does not fit the encoder.
    """

    def __init__(self, config: EmbeddedClapConfig):
        super().__init__()
        path = config.text_model
        if path is None and config.text_config is None:
            path = default_text_model_path()
        self.model = load_transformers_model(
            path, None if path is not None else config.text_config, "bert", "text_model"
        )
        self.model.requires_grad_(False).eval()
        source = config.text_tokenizer or path or default_text_model_path()
        self.tokenizer = load_text_tokenizer(source, self.model)
        self.max_tokens = int(config.max_text_tokens)
        self.width = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        """Stays in eval mode: the encoder is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, texts: Sequence[str | None], batch_size: int = 32) -> torch.Tensor:
        """Sentence features: token states mean-pooled over real tokens, L2-normalised.

        Args:
            texts: Texts; ``None`` counts as the empty text.
            batch_size: Texts per forward pass (sorted by length to pad little).

        Returns:
            ``(N, H)`` float32 features on the encoder's device.
        """
        texts = ["" if t is None else str(t) for t in texts]
        device = next(self.model.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros((len(texts), self.width), device=device)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            states = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
            out[torch.tensor(rows, device=device)] = F.normalize(pooled, dim=-1)
        return out

"""Every hyperparameter of a MOS model, in one dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from qamdt.audio_spec import AUDIO_PRESETS
from qamdt.config import ConfigBase
from qamdt.errors import ConfigError
from qamdt.json_files import write_json
from qamdt.modules.conv_settings import checked_conv_settings

MODEL_KINDS = ("embedded", "ssl", "text-aware")
AUDIO_ENCODERS = ("embedded", "ssl")
POOLINGS = ("mean", "stats")
LEVEL_NORMS = ("none", "rms")
#: RMS each window is scaled to by ``level_norm: rms`` (-20 dBFS, about a peak-normalised
#: music window's level, so the fixed ``mel_mean``/``mel_std`` affine still fits).
LEVEL_NORM_RMS = 0.1
CONFIG_FORMAT_VERSION = 1
SSL_SAMPLE_RATE = 16000


@dataclasses.dataclass
class MosModelConfig(ConfigBase):
    """Hyperparameters of a MOS model of any kind.

    Attributes:
        kind: ``"embedded"`` (log-mel CNN trained from scratch), ``"ssl"`` (wav2vec 2.0
            style encoder, mean pooling and a linear head, as in Ragano et al. 2023) or
            ``"text-aware"`` (audio and text encoders with co-attention, after WhisQ).
        sample_rate: Rate the model's input is at. ``None`` picks the encoder's rate: the
            mel preset's for the embedded encoder, 16 kHz for SSL encoders.
        window_seconds: Length of the fixed scoring window; ``predict`` averages the
            scores of windows spread over a clip.
        mel_preset: Audio preset of the embedded encoder's mel front end.
        mel_fmax: Upper edge of the mel bands. ``None`` uses the Nyquist frequency rather
            than the preset's 8 kHz: band limiting and aliasing show above 8 kHz.
        mel_mean: Fixed shift of the log-mel input (natural-log units). A fixed affine,
            not per-clip standardisation, keeps loudness and noise-floor cues.
        mel_std: Fixed scale of the log-mel input.
        cnn_channels: Output channels of the embedded encoder's conv blocks.
        cnn_strides: ``(frequency, time)`` down-sampling of each conv block.
        embed_dim: Width of the embedded encoder's output sequence.
        level_norm: Level of the embedded encoder's input: ``"none"`` takes each window as
            the caller normalised it (the clip peak-normalised, so a quiet window of a
            loud clip stays quiet); ``"rms"`` scales every window to one RMS
            (``LEVEL_NORM_RMS``, over its valid samples) before the log-mel, so the score
            does not depend on the window's level. One gain per window: levels inside it
            (noise, hum against the music) are kept.
        temporal_layers: Transformer layers over the embedded encoder's sequence, for
            context longer than the convolutions see (reverb tails); 0 for none.
        pooling: ``"mean"`` or ``"stats"`` (mean and standard deviation over time);
            ``None`` picks ``"stats"`` for the embedded model and ``"mean"`` (the authors'
            choice) for the SSL model. The text-aware model always mean-pools.
        ssl_model: Local folder of a pretrained SSL encoder (transformers ``AutoModel``).
        ssl_config: Config dict of the SSL encoder, used to build it randomly when
            ``ssl_model`` is not given; ``save_pretrained`` fills it in so a saved model
            rebuilds without the original folder. ``model_type`` defaults to wav2vec2.
        ssl_layer: Pool this hidden layer (0 = input of the first transformer layer)
            instead of the last one.
        freeze_encoder: Keep the audio encoder's weights fixed (no grad, eval mode).
        head_hidden: Hidden width of the score heads; 0 gives a single linear layer.
            ``None`` picks 0 (a linear head, as the authors) for the SSL model and 64
            otherwise.
        dropout: Dropout before the score head (and in the text-aware blocks).
        audio_encoder: Audio encoder of the text-aware model: ``"embedded"`` or ``"ssl"``.
        text_model: Local folder of a transformers text encoder. ``None`` with no
            ``text_config`` uses the bundled all-MiniLM-L6-v2.
        text_config: Config dict of the text encoder, to build it randomly (``model_type``
            defaults to bert); filled in by ``save_pretrained`` like ``ssl_config``.
        text_tokenizer: Local folder of the tokenizer; ``None`` uses ``text_model``'s, or
            the bundled MiniLM tokenizer.
        max_text_tokens: Captions are truncated to this many tokens.
        freeze_text_encoder: Keep the text encoder's weights fixed.
        d_model: Common width of the projected audio and text sequences.
        n_heads: Attention heads of the co-attention blocks.
        ot_weight: Weight of the Sinkhorn optimal-transport term; 0 disables it.
        ot_epsilon: Entropic regularisation of the Sinkhorn term (cosine-cost units).
        ot_iters: Sinkhorn iterations.
        distill_layers: SSL layers whose k-means token ids the model also learns to
            predict (DistilMOS); empty disables distillation.
        distill_clusters: Number of k-means clusters per distilled layer.
        distill_weight: Weight of the distillation cross-entropy in ``aux_loss`` (used
            only with ``distill_layers``).
        kind_outputs: Outputs of an auxiliary head (``embedded`` models) that learns, in
            training only, the severity of each degradation kind in a window
            (``MosTrainConfig.kind_weight`` sets it); 0: no such head.
        score_offset: The overall-quality score is ``score_offset + score_scale * r`` for
            the head's raw output ``r``; training sets both from its targets.
        score_scale: See ``score_offset``.
        ta_offset: Like ``score_offset`` for the text-alignment head; ``None`` reuses
            ``score_offset``.
        ta_scale: Like ``score_scale`` for the text-alignment head; ``None`` reuses
            ``score_scale``.
    """

    kind: str = "embedded"
    sample_rate: int | None = None
    window_seconds: float = 4.0
    # Embedded encoder.
    mel_preset: str = "embedded"
    mel_fmax: float | None = None
    mel_mean: float = -4.5
    mel_std: float = 2.5
    cnn_channels: tuple[int, ...] = (16, 32, 64, 128)
    cnn_strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2), (2, 1))
    embed_dim: int = 128
    level_norm: str = "none"
    temporal_layers: int = 0
    pooling: str | None = None
    # SSL encoder.
    ssl_model: str | None = None
    ssl_config: dict[str, Any] | None = None
    ssl_layer: int | None = None
    freeze_encoder: bool = False
    # Head.
    head_hidden: int | None = None
    dropout: float = 0.3
    # Text-aware model.
    audio_encoder: str = "embedded"
    text_model: str | None = None
    text_config: dict[str, Any] | None = None
    text_tokenizer: str | None = None
    max_text_tokens: int = 64
    freeze_text_encoder: bool = True
    d_model: int = 128
    n_heads: int = 4
    ot_weight: float = 0.1
    ot_epsilon: float = 0.1
    ot_iters: int = 50
    # Self-distillation (SSL kind).
    distill_layers: tuple[int, ...] = ()
    distill_clusters: int = 50
    distill_weight: float = 1.0
    # Score scaling.
    kind_outputs: int = 0
    score_offset: float = 3.0
    score_scale: float = 1.0
    ta_offset: float | None = None
    ta_scale: float | None = None

    config_where = "MOS model config"
    config_noun = "MOS model setting"

    def __post_init__(self):
        self.cnn_channels, self.cnn_strides = checked_conv_settings(
            self.cnn_channels, self.cnn_strides
        )
        self.distill_layers = tuple(int(v) for v in self.distill_layers)
        self._check_choice("kind", MODEL_KINDS)
        self._check_choice("audio_encoder", AUDIO_ENCODERS)
        if self.pooling is None:
            self.pooling = "mean" if self.kind == "ssl" else "stats"
        if self.head_hidden is None:
            self.head_hidden = 0 if self.kind == "ssl" else 64
        self._check_choice("pooling", POOLINGS)
        self._check_choice("level_norm", LEVEL_NORMS)
        if self.mel_preset not in AUDIO_PRESETS:
            raise ConfigError(
                f"mel_preset: unknown audio preset '{self.mel_preset}'; "
                f"choose one of {sorted(AUDIO_PRESETS)}"
            )
        if self.temporal_layers < 0:
            raise ConfigError(f"temporal_layers must be >= 0, got {self.temporal_layers}")
        if self.temporal_layers and self.embed_dim % 4:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must divide by 4 for temporal_layers")
        spec = AUDIO_PRESETS[self.mel_preset]
        if self.mel_fmax is not None and not spec.fmin < self.mel_fmax <= spec.sample_rate / 2:
            raise ConfigError(
                f"mel_fmax must be in ({spec.fmin}, {spec.sample_rate / 2}], got {self.mel_fmax}"
            )
        for name in ("embed_dim", "d_model", "n_heads", "max_text_tokens", "ot_iters"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must divide by n_heads ({self.n_heads})")
        for name in ("window_seconds", "mel_std", "ot_epsilon"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("ot_weight", "distill_weight", "dropout", "head_hidden", "kind_outputs"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.distill_layers and self.distill_clusters < 2:
            raise ConfigError(f"distill_clusters must be >= 2, got {self.distill_clusters}")
        if self.distill_layers and self.kind != "ssl":
            raise ConfigError("distill_layers is only supported for kind 'ssl'")
        for name in ("ssl_config", "text_config"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{name} must be a dict, got {type(value).__name__}")
            if value is not None:
                setattr(self, name, dict(value))
        if self.level_norm != "none" and self.uses_ssl:
            raise ConfigError("level_norm applies to the embedded (log-mel) encoder only")
        expected = self.encoder_sample_rate()
        if self.sample_rate is None:
            self.sample_rate = expected
        elif int(self.sample_rate) != expected:
            raise ConfigError(
                f"sample_rate {self.sample_rate} does not match the audio encoder, which "
                f"runs at {expected} Hz"
            )
        self.sample_rate = int(self.sample_rate)

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ConfigError(
                f"{name}: unknown value {getattr(self, name)!r}; choose one of {list(choices)}"
            )

    @property
    def uses_ssl(self) -> bool:
        """Whether the audio encoder is an SSL model."""
        return self.kind == "ssl" or (self.kind == "text-aware" and self.audio_encoder == "ssl")

    @property
    def window_samples(self) -> int:
        """Samples in one scoring window."""
        return max(1, round(self.window_seconds * self.sample_rate))

    def encoder_sample_rate(self) -> int:
        """Sample rate the audio encoder needs.

        Returns:
            16000 for SSL encoders, the mel preset's rate otherwise.
        """
        if self.uses_ssl:
            return SSL_SAMPLE_RATE
        return AUDIO_PRESETS[self.mel_preset].sample_rate

    def save(self, path: str | os.PathLike) -> None:
        """Writes the config as JSON, with a format version.

        Args:
            path: Destination file.
        """
        data = {"format_version": CONFIG_FORMAT_VERSION, **self.to_dict()}
        write_json(path, data, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MosModelConfig:
        """Reads a config written by :meth:`save`.

        Args:
            path: The JSON file.

        Returns:
            The config.

        Raises:
            ConfigError: If the file is not valid JSON, has an unsupported format version or
                an unknown or invalid setting; the message names the file.
        """
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{os.fspath(path)}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{os.fspath(path)}: expected a JSON object")
        version = data.pop("format_version", CONFIG_FORMAT_VERSION)
        if version != CONFIG_FORMAT_VERSION:
            raise ConfigError(
                f"{os.fspath(path)}: format_version {version} is not supported "
                f"(this version reads {CONFIG_FORMAT_VERSION})"
            )
        return cls.from_dict(data, where=os.fspath(path))

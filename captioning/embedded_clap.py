"""The embedded CLAP scorer: a small log-mel CNN against a frozen MiniLM (kind ``embedded``).

A contrastive audio-text model small enough to train on a CPU in minutes
(``captioning.train_clap``):

* Audio tower: the ``embedded`` preset's log-mel (22.05 kHz, 80 bands up to 8 kHz), a
  fixed affine, strided 3x3 conv blocks, the channels and remaining frequency bins
  flattened and projected per time step, statistics pooling (mean and standard deviation
  over time) and a linear projection to ``embed_dim``.
* Text tower: a frozen sentence encoder (the bundled all-MiniLM-L6-v2 by default), mean
  pooled over the real tokens and L2-normalised as sentence-transformers does, then a
  trained projection (linear, or a one-hidden-layer MLP) to ``embed_dim``.
* A learnable logit scale (inverse temperature) as in CLIP, clamped at
  ``max_logit_scale``.

Long audio: the log-mel of the whole clip is cut into windows of ``window_seconds``
(5 s) chosen by :func:`qamdt.audio_windows.window_starts` (evenly spaced windows covering
the clip, the first at the start and the last at the end; one centred window when the
clip is at most 5 % longer than a window); the clip's embedding is the normalised mean of
its normalised window embeddings. A clip shorter than a window is encoded whole (the
network takes any length). Training crops random windows of the same length.

A saved model is a folder with ``config.json`` (every hyperparameter, ``kind``
``"embedded"``) and ``model.safetensors`` with the trained weights, loaded strictly. The
frozen text encoder's weights are not saved when they come from a folder (the bundled
MiniLM ships in its package); a text encoder built at random from ``text_config`` (tests)
is saved under ``text_encoder.``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from captioning.base import CONFIG_NAME, ClapScorer, register_clap
from qamdt.audio_io import prepare_clips
from qamdt.audio_spec import AUDIO_PRESETS, get_audio_spec
from qamdt.audio_windows import window_starts
from qamdt.errors import CheckpointError, ConfigError
from qamdt.mel import MelFrontEnd
from qamdt.modules.conv import conv_stack, frames_first
from qamdt.transformers_loading import (
    config_to_dict,
    default_text_model_path,
    load_text_tokenizer,
    load_transformers_model,
)

WEIGHTS_NAME = "model.safetensors"
CONFIG_FORMAT_VERSION = 1
TEXT_ENCODER_PREFIX = "text_encoder."
POOLINGS = ("stats", "mean")
# Clips shorter than this many mel hops are zero-padded up to it before the front end.
MIN_FRAMES = 16


@dataclasses.dataclass
class EmbeddedClapConfig:
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

    def __post_init__(self):
        self.cnn_channels = tuple(int(c) for c in self.cnn_channels)
        self.cnn_strides = tuple(tuple(int(v) for v in s) for s in self.cnn_strides)
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
        if not self.cnn_channels or len(self.cnn_channels) != len(self.cnn_strides):
            raise ConfigError(
                "cnn_channels and cnn_strides need the same, non-zero number of entries, got "
                f"{len(self.cnn_channels)} and {len(self.cnn_strides)}"
            )
        if any(len(s) != 2 or min(s) < 1 for s in self.cnn_strides):
            raise ConfigError(
                f"cnn_strides: each entry must be two ints >= 1, got {self.cnn_strides}"
            )
        for name in ("audio_width", "embed_dim", "max_text_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.cnn_channels) < 1:
            raise ConfigError(f"cnn_channels must be >= 1, got {self.cnn_channels}")
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EmbeddedClapConfig:
        """Builds a config from a mapping; missing fields take their defaults.

        Args:
            values: Field values by name (a ``format_version`` key is accepted).

        Returns:
            The config.

        Raises:
            ConfigError: On an unknown key, an unsupported format version or a bad value.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"a CLAP config must be a mapping, got {type(values).__name__}")
        values = dict(values)
        version = values.pop("format_version", CONFIG_FORMAT_VERSION)
        if version != CONFIG_FORMAT_VERSION:
            raise ConfigError(f"format_version {version} is not supported")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown CLAP setting(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"invalid CLAP setting ({exc})") from exc


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


@register_clap("embedded")
class EmbeddedClapScorer(ClapScorer):
    """The embedded CLAP model behind the :class:`ClapScorer` interface.

    Attributes:
        config: The hyperparameters.
        mel: The log-mel front end (no weights).
        heads: The trained part (:class:`ClapHeads`).
        text_encoder: The frozen text encoder (:class:`FrozenTextEncoder`).

    Args:
        config: An :class:`EmbeddedClapConfig`, a dict of its fields, or ``None`` for the
            defaults.

    Raises:
        ConfigError: On an invalid setting or a text encoder that cannot be loaded.
    """

    def __init__(self, config: EmbeddedClapConfig | Mapping[str, Any] | None = None):
        if config is None:
            config = EmbeddedClapConfig()
        elif not isinstance(config, EmbeddedClapConfig):
            config = EmbeddedClapConfig.from_dict(config)
        self.config = config
        spec = get_audio_spec(config.mel_preset)
        if config.mel_fmax is not None:
            spec = dataclasses.replace(spec, fmax=float(config.mel_fmax))
        self.mel = MelFrontEnd(spec)
        self.sample_rate = spec.sample_rate
        self.window_frames = max(1, round(config.window_seconds * spec.frames_per_second))
        self.text_encoder = FrozenTextEncoder(config)
        self.heads = ClapHeads(config, spec.n_mels, self.text_encoder.width)
        self.heads.eval()

    # ------------------------------------------------------------------------------ device

    @property
    def device(self) -> torch.device:
        """Device of the trained weights."""
        return self.heads.log_logit_scale.device

    def to(self, device: str | torch.device) -> EmbeddedClapScorer:
        """Moves the model (front end, heads and text encoder) to ``device``."""
        self.mel.to(device)
        self.heads.to(device)
        self.text_encoder.to(device)
        return self

    # ------------------------------------------------------------------------------- audio

    @torch.no_grad()
    def log_mel(self, wave: np.ndarray) -> torch.Tensor:
        """Log-mel of a whole prepared clip (at ``sample_rate``, normalised).

        Args:
            wave: ``(samples,)`` float32 audio; clips under ``MIN_FRAMES`` hops are
                zero-padded up to that.

        Returns:
            ``(n_mels, frames)`` on the model's device.
        """
        minimum = max(MIN_FRAMES * self.mel.spec.hop_length, self.mel.min_samples)
        if wave.shape[0] < minimum:
            wave = np.pad(wave, (0, minimum - wave.shape[0]))
        return self.mel(torch.from_numpy(np.ascontiguousarray(wave)).to(self.device))

    def mel_windows(self, log_mel: torch.Tensor) -> list[torch.Tensor]:
        """The windows of :func:`window_starts` over a clip's log-mel.

        Args:
            log_mel: ``(n_mels, frames)``.

        Returns:
            ``(n_mels, window_frames)`` slices (one shorter slice for a short clip).
        """
        size = self.window_frames
        return [log_mel[:, s : s + size] for s in window_starts(log_mel.shape[1], size)]

    @torch.no_grad()
    def embed_mels(self, log_mels: Sequence[torch.Tensor], batch_size: int = 8) -> np.ndarray:
        """Clip embeddings from whole-clip log-mels (the mean over windows).

        Args:
            log_mels: ``(n_mels, frames)`` per clip.
            batch_size: Windows per forward pass.

        Returns:
            ``(N, D)`` float32, L2-normalised.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.heads.training
        self.heads.eval()
        windows: list[tuple[int, torch.Tensor]] = []
        for index, log_mel in enumerate(log_mels):
            windows += [(index, w) for w in self.mel_windows(log_mel.to(self.device))]
        # Only windows of equal length can share a batch: group them by length.
        by_length: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for owner, window in windows:
            by_length.setdefault(window.shape[1], []).append((owner, window))
        sums = torch.zeros((len(log_mels), self.config.embed_dim), device=self.device)
        try:
            for group in by_length.values():
                for start in range(0, len(group), batch_size):
                    part = group[start : start + batch_size]
                    emb = self.heads.embed_windows(torch.stack([w for _, w in part]))
                    owners = torch.tensor([o for o, _ in part], device=self.device)
                    sums.index_add_(0, owners, emb)
        finally:
            self.heads.train(was_training)
        return F.normalize(sums, dim=-1).cpu().numpy().astype(np.float32)

    def embed_audio(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> np.ndarray:
        """``(N, D)`` L2-normalised clip embeddings (mean over 5 s windows).

        Args:
            audio: Mono or ``(channels, samples)`` float arrays, any rate and length.
            sample_rates: One rate for all clips or one per clip.
            batch_size: Windows per forward pass.

        Returns:
            Float32 embeddings, one row per clip.

        Raises:
            ValueError: On an empty batch or mismatched rates.
            AudioError: On NaN/inf samples.
        """
        prepared = prepare_clips(audio, sample_rates, self.sample_rate)
        return self.embed_mels([self.log_mel(w) for w in prepared], batch_size)

    # -------------------------------------------------------------------------------- text

    def text_features(self, texts: Sequence[str | None], batch_size: int = 32) -> torch.Tensor:
        """Frozen sentence features (before the trained projection).

        Args:
            texts: Texts; ``None`` counts as empty.
            batch_size: Texts per forward pass.

        Returns:
            ``(N, H)`` on the model's device.
        """
        return self.text_encoder(texts, batch_size)

    @torch.no_grad()
    def embed_text(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """``(N, D)`` L2-normalised text embeddings.

        Args:
            texts: Texts; ``None`` and ``""`` give valid embeddings.
            batch_size: Texts per forward pass.

        Returns:
            Float32 embeddings, one row per text.

        Raises:
            ValueError: On an empty list.
        """
        if len(texts) == 0:
            raise ValueError("no texts given")
        was_training = self.heads.training
        self.heads.eval()
        try:
            emb = self.heads.embed_sentences(self.text_features(texts, batch_size))
        finally:
            self.heads.train(was_training)
        return emb.cpu().numpy().astype(np.float32)

    # ----------------------------------------------------------------------- save and load

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights ``save_pretrained`` writes: the heads, plus a random text encoder."""
        state = dict(self.heads.state_dict())
        if self.config.saves_text_encoder:
            for name, tensor in self.text_encoder.model.state_dict().items():
                state[TEXT_ENCODER_PREFIX + name] = tensor
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor], source: str = "<state>") -> None:
        """Loads weights strictly, naming the first missing, unexpected or misshapen key.

        Args:
            state: Tensors by name, as :meth:`state_dict` gives them.
            source: Where they came from, for messages.

        Raises:
            CheckpointError: On missing or unexpected keys or a shape mismatch.
        """
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing key(s) {missing[:10]}")
            if unexpected:
                parts.append(f"unexpected key(s) {unexpected[:10]}")
            raise CheckpointError(f"{source}: {'; '.join(parts)}")
        for name, target in expected.items():
            if tuple(state[name].shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{source}: key '{name}' has shape {tuple(state[name].shape)}, the model "
                    f"expects {tuple(target.shape)}"
                )
        heads = {k: v for k, v in state.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
        self.heads.load_state_dict(heads, strict=True)
        if self.config.saves_text_encoder:
            n = len(TEXT_ENCODER_PREFIX)
            text = {k[n:]: v for k, v in state.items() if k.startswith(TEXT_ENCODER_PREFIX)}
            self.text_encoder.model.load_state_dict(text, strict=True)

    def config_for_saving(self) -> dict[str, Any]:
        """``config.json`` content: the config (a random text encoder's config filled in)."""
        values = self.config.to_dict()
        if self.config.saves_text_encoder:
            values["text_config"] = config_to_dict(self.text_encoder.model.config)
        return {"format_version": CONFIG_FORMAT_VERSION, **values}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json`` and ``model.safetensors`` into ``directory``.

        Args:
            directory: The folder; created if missing, files replaced.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu().clone() for k, v in self.state_dict().items()}
        safetensors.torch.save_file(
            tensors, os.fspath(directory / WEIGHTS_NAME), metadata={"kind": self.kind}
        )
        with open(directory / CONFIG_NAME, "w", encoding="utf-8") as handle:
            json.dump(self.config_for_saving(), handle, indent=2, sort_keys=True)
            handle.write("\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> EmbeddedClapScorer:
        """Loads a model saved by :meth:`save_pretrained`.

        Args:
            path: The folder.

        Returns:
            The scorer, on the CPU, in eval mode.

        Raises:
            CheckpointError: If a file is missing or the weights do not fit the config.
            ConfigError: If the config is invalid (the file is named).
        """
        directory = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory}: missing {name}")
        try:
            values = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
            config = EmbeddedClapConfig.from_dict(values)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{directory / CONFIG_NAME}: not valid JSON ({exc})") from exc
        except ConfigError as exc:
            raise ConfigError(f"{directory / CONFIG_NAME}: {exc}") from exc
        scorer = cls(config)
        weights = directory / WEIGHTS_NAME
        try:
            state = safetensors.torch.load_file(os.fspath(weights))
        except (OSError, safetensors.SafetensorError) as exc:
            raise CheckpointError(f"{weights}: cannot be read as safetensors ({exc})") from exc
        scorer.load_state_dict(state, os.fspath(weights))
        return scorer

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
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from captioning.base import CONFIG_NAME, ClapScorer, read_saved_config, register_clap
from captioning.clap_model import (
    CONFIG_FORMAT_VERSION,
    ClapHeads,
    EmbeddedClapConfig,
    FrozenTextEncoder,
)
from qamdt.audio_io import prepare_clips
from qamdt.audio_spec import get_audio_spec
from qamdt.audio_windows import window_starts
from qamdt.checkpoints import load_state_strict, read_state_file
from qamdt.json_files import write_json
from qamdt.mel import MelFrontEnd
from qamdt.transformers_loading import config_to_dict

WEIGHTS_NAME = "model.safetensors"
TEXT_ENCODER_PREFIX = "text_encoder."
# Clips shorter than this many mel hops are zero-padded up to it before the front end.
MIN_FRAMES = 16


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
        if not self.config.saves_text_encoder:
            load_state_strict(self.heads, state, source)
            return
        n = len(TEXT_ENCODER_PREFIX)
        heads = {k: v for k, v in state.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
        text = {k[n:]: v for k, v in state.items() if k.startswith(TEXT_ENCODER_PREFIX)}
        load_state_strict(self.heads, heads, source)
        load_state_strict(self.text_encoder.model, text, f"{source} ({TEXT_ENCODER_PREFIX}*)")

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
        # One metadata key: safetensors orders several at random, and a rerun must give
        # the same bytes.
        tensors = {k: v.detach().contiguous().cpu().clone() for k, v in self.state_dict().items()}
        safetensors.torch.save_file(
            tensors, os.fspath(directory / WEIGHTS_NAME), metadata={"kind": self.kind}
        )
        write_json(directory / CONFIG_NAME, self.config_for_saving(), indent=2, sort_keys=True)

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
        values, config_path = read_saved_config(directory, cls.kind, "CLAP scorer")
        scorer = cls(EmbeddedClapConfig.from_dict(values, os.fspath(config_path)))
        weights = directory / WEIGHTS_NAME
        scorer.load_state_dict(read_state_file(weights), os.fspath(weights))
        return scorer

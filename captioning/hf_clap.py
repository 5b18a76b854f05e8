"""CLAP scorer on a transformers ``ClapModel`` loaded from a local folder (kind ``hf``).

Any checkpoint in the transformers CLAP format works (``laion/clap-htsat-unfused``,
``laion/clap-htsat-fused``, ``laion/larger_clap_music``, ...), once downloaded: nothing is
fetched from the hub (``local_files_only=True``).

Long audio is cut deterministically, never by the feature extractor's random truncation: a
clip is resampled to the extractor's rate (48 kHz), split into windows of the extractor's
``max_length_s`` (10 s) by :func:`qamdt.audio_windows.window_starts` (one centred window
when the clip is at most 5 % longer than a window, else evenly spaced windows covering it),
each window is embedded and the L2-normalised window embeddings are averaged and normalised
again. Every window is at most ``max_length_s`` long, so ``rand_trunc`` never crops and
fusion models see ``is_longer = False`` (their global branch); the extractor is called one
window at a time and ``is_longer`` is overwritten because, for ``truncation="fusion"``, it
otherwise marks a random clip of each batch as longer. Shorter clips are repeat-padded by
the extractor (``padding="repeatpad"``, as in training).

A saved scorer is a folder holding ``config.json`` (``kind``, ``model_dir``,
``window_seconds``, ``max_text_tokens``) and the transformers files in ``model_dir``
(``model/`` by default). ``model_dir`` may also be an absolute path, so a hand-written
``{"kind": "hf", "model_dir": "/models/clap-htsat-unfused"}`` uses a downloaded folder in
place without copying it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from captioning.base import CONFIG_NAME, ClapScorer, check_texts, register_clap
from qamdt.audio_io import prepare_clips
from qamdt.audio_windows import split_windows
from qamdt.errors import ConfigError, QamdtError
from qamdt.json_files import write_json

MODEL_DIR = "model"
_SETTINGS = ("model_dir", "window_seconds", "max_text_tokens")


def features_tensor(output: Any) -> torch.Tensor:
    """The embedding tensor of ``get_text_features`` / ``get_audio_features``.

    transformers 4 returns the projected embeddings as a tensor; transformers 5 returns an
    output object whose ``pooler_output`` holds them.

    Args:
        output: What the method returned.

    Returns:
        ``(N, D)`` embeddings.
    """
    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "text_embeds", "audio_embeds"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise QamdtError(f"unexpected CLAP features output of type {type(output).__name__}")


@register_clap("hf")
class HfClapScorer(ClapScorer):
    """A transformers ``ClapModel`` with its tokenizer and ``ClapFeatureExtractor``.

    Args:
        model_path: Local folder with the model, tokenizer and feature extractor.
        window_seconds: Window length for long audio; ``None`` takes the feature
            extractor's ``max_length_s`` (10 s for the LAION models). Longer windows would
            be cropped at random by the extractor, so they are refused.
        max_text_tokens: Texts are truncated to this many tokens (77 as in LAION's
            training), and at most to the text model's position limit.
        device: Where to run the model; ``None`` keeps it on the CPU.

    Raises:
        QamdtError: If the folder is missing or does not hold a loadable CLAP model.
        ConfigError: On an invalid setting.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        window_seconds: float | None = None,
        max_text_tokens: int = 77,
        device: str | torch.device | None = None,
    ):
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            raise QamdtError(f"{self.model_path}: no CLAP model folder there")
        try:
            self.model = ClapModel.from_pretrained(os.fspath(model_path), local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(
                os.fspath(model_path), local_files_only=True
            )
            self.feature_extractor = ClapFeatureExtractor.from_pretrained(
                os.fspath(model_path), local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise QamdtError(f"{self.model_path}: cannot load a CLAP model ({exc})") from exc
        self.model.eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        max_samples = int(self.feature_extractor.nb_max_samples)
        if window_seconds is None:
            window_seconds = max_samples / self.sample_rate
        window_seconds = float(window_seconds)
        self.window_samples = round(window_seconds * self.sample_rate)
        if not 0 < self.window_samples <= max_samples:
            raise ConfigError(
                f"window_seconds must be in (0, {max_samples / self.sample_rate:g}] (the "
                f"feature extractor's max_length_s), got {window_seconds:g}"
            )
        self.window_seconds = window_seconds
        if int(max_text_tokens) < 1:
            raise ConfigError(f"max_text_tokens must be >= 1, got {max_text_tokens}")
        # Roberta-style position ids start after the padding index, hence the margin of 2.
        positions = int(getattr(self.model.config.text_config, "max_position_embeddings", 514))
        self.max_text_tokens = min(int(max_text_tokens), positions - 2)

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_audio(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> np.ndarray:
        """``(N, D)`` L2-normalised clip embeddings: the mean over each clip's windows.

        Args:
            audio: Mono or ``(channels, samples)`` float arrays, any length.
            sample_rates: One rate for all clips or one per clip.
            batch_size: Windows per forward pass.

        Returns:
            Float32 embeddings, one row per clip.

        Raises:
            ValueError: On an empty batch, mismatched rates or a bad batch size.
            AudioError: On NaN/inf samples.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        owners: list[int] = []
        features: list[torch.Tensor] = []
        for index, wave in enumerate(prepare_clips(audio, sample_rates, self.sample_rate)):
            for window in split_windows(wave, self.window_samples):
                extracted = self.feature_extractor(
                    [window], sampling_rate=self.sample_rate, return_tensors="pt"
                )
                features.append(extracted["input_features"])
                owners.append(index)
        rows = []
        for start in range(0, len(features), batch_size):
            batch = torch.cat(features[start : start + batch_size]).to(self.device)
            is_longer = torch.zeros((batch.shape[0], 1), dtype=torch.bool, device=self.device)
            out = self.model.get_audio_features(input_features=batch, is_longer=is_longer)
            rows.append(F.normalize(features_tensor(out).float(), dim=-1).cpu())
        windows = torch.cat(rows)
        clips = torch.zeros((len(audio), windows.shape[1]))
        clips.index_add_(0, torch.tensor(owners), windows)
        return F.normalize(clips, dim=-1).numpy().astype(np.float32)

    @torch.no_grad()
    def embed_text(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """``(N, D)`` L2-normalised text embeddings.

        Args:
            texts: Captions; ``None`` counts as the empty text.
            batch_size: Texts per forward pass.

        Returns:
            Float32 embeddings, one row per text.

        Raises:
            ValueError: On an empty list or a bad batch size.
        """
        texts = check_texts(texts, batch_size)
        rows = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="pt",
            )
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k != "token_type_ids"}
            out = self.model.get_text_features(**tokens)
            rows.append(F.normalize(features_tensor(out).float(), dim=-1).cpu())
        return torch.cat(rows).numpy().astype(np.float32)

    def settings(self) -> dict[str, Any]:
        """The ``config.json`` values of a scorer saved with the model in ``model/``."""
        return {
            "kind": self.kind,
            "model_dir": MODEL_DIR,
            "window_seconds": self.window_seconds,
            "max_text_tokens": self.max_text_tokens,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json`` and the model, tokenizer and extractor into ``model/``.

        Args:
            directory: The folder; created if missing.
        """
        directory = Path(directory)
        model_dir = directory / MODEL_DIR
        model_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(os.fspath(model_dir))
        self.tokenizer.save_pretrained(os.fspath(model_dir))
        self.feature_extractor.save_pretrained(os.fspath(model_dir))
        write_json(directory / CONFIG_NAME, self.settings(), indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> HfClapScorer:
        """Loads a scorer saved by :meth:`save_pretrained` (or a hand-written config).

        Args:
            path: Folder with ``config.json``; its ``model_dir`` is relative to it or
                absolute.

        Returns:
            The scorer, on the CPU.

        Raises:
            QamdtError: If the config or the model folder is missing or unreadable.
            ConfigError: On an unknown or invalid setting.
        """
        directory = Path(path)
        config_path = directory / CONFIG_NAME
        try:
            values = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise QamdtError(f"{config_path}: cannot read the scorer config ({exc})") from exc
        if values.get("kind") != "hf":
            raise ConfigError(f"{config_path}: kind is {values.get('kind')!r}, not 'hf'")
        unknown = sorted(set(values) - {"kind", *_SETTINGS})
        if unknown:
            raise ConfigError(f"{config_path}: unknown setting(s) {unknown}; known: {_SETTINGS}")
        model_dir = directory / str(values.get("model_dir", MODEL_DIR))
        return cls(
            model_dir,
            window_seconds=values.get("window_seconds"),
            max_text_tokens=int(values.get("max_text_tokens", 77)),
        )

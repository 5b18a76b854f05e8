"""The pipeline folder: its index (``pipeline.json``), its one writer and its one reader.

A pipeline folder holds one sub-folder per component and a small index::

    pipeline.json       audio preset, how the model was conditioned, level -> prefix map,
                        and optionally the folder's default generation settings
    transformer/        QualityMDTTransformer (save_pretrained)
    vae/                diffusers AutoencoderKL over log-mels (scaling factor in its config)
    vocoder/            SpeechT5HifiGan or Griffin-Lim settings
    text_encoder/       the text encoder and tokenizer (absent when it is the bundled
                        MiniLM, which ships with the package: pipeline.json says "embedded")
    scheduler/          the training DDPM schedule (samplers are built from it)
    quality_stats.json  mu, sigma, level edges and prefix thresholds of the training p-MOS

``QAMDTPipeline.save_pretrained`` and the training run's export both write through
:func:`save_pipeline_folder`; ``QAMDTPipeline.from_pretrained`` reads the index with
:func:`read_pipeline_index`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qamdt.errors import ConfigError
from qamdt.generation.settings import partial_settings
from qamdt.json_files import read_json_object, write_json
from qamdt.quality import DEFAULT_LEVEL_PREFIXES, QUALITY_STATS_NAME

INDEX_NAME = "pipeline.json"
STATS_NAME = QUALITY_STATS_NAME
EMBEDDED = "embedded"
"""Index value of a component that ships with the package and is not copied."""


@dataclasses.dataclass
class PipelineIndex:
    """The contents of ``pipeline.json``.

    Attributes:
        audio: The audio preset, as :meth:`~qamdt.audio_spec.AudioSpec.to_dict` gives it.
        text_encoder: "embedded" (the bundled MiniLM) or the sub-folder "text_encoder".
        vocoder: "embedded" (the packaged HiFi-GAN universal) or the sub-folder "vocoder".
        quality_token: Whether the model was trained with quality tokens.
        quality_prefix: Whether it was trained with quality prefixes in the captions.
        level_prefixes: Quality level -> text prefix.
        trained_on: The manifest the model was trained on, when known.
        generation_defaults: Default generation settings of the folder, a partial
            mapping of :class:`~qamdt.generation.settings.GenerationSettings` fields
            (absent in folders written before they existed).
    """

    audio: dict[str, Any]
    text_encoder: str = "text_encoder"
    vocoder: str = "vocoder"
    quality_token: bool = True
    quality_prefix: bool = True
    level_prefixes: dict[int, str] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_LEVEL_PREFIXES)
    )
    trained_on: str | None = None
    generation_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``trained_on`` and ``generation_defaults`` only when set."""
        values = {
            "audio": self.audio,
            "text_encoder": self.text_encoder,
            "vocoder": self.vocoder,
            "quality_token": self.quality_token,
            "quality_prefix": self.quality_prefix,
            "level_prefixes": {str(k): v for k, v in sorted(self.level_prefixes.items())},
        }
        if self.trained_on is not None:
            values["trained_on"] = self.trained_on
        if self.generation_defaults:
            values["generation_defaults"] = self.generation_defaults
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str) -> PipelineIndex:
        """Reads an index, checking its generation defaults.

        Raises:
            ConfigError: Naming ``where`` when the audio preset is missing or a default
                generation setting is unknown or bad.
        """
        if not isinstance(values.get("audio"), Mapping):
            raise ConfigError(f"{where}: 'audio' (the audio preset) is missing")
        prefixes = values.get("level_prefixes") or DEFAULT_LEVEL_PREFIXES
        return cls(
            audio=dict(values["audio"]),
            text_encoder=values.get("text_encoder", "text_encoder"),
            vocoder=values.get("vocoder", "vocoder"),
            quality_token=values.get("quality_token", True),
            quality_prefix=values.get("quality_prefix", True),
            level_prefixes={int(k): v for k, v in prefixes.items()},
            trained_on=values.get("trained_on"),
            generation_defaults=partial_settings(
                values.get("generation_defaults"), f"{where}: generation_defaults"
            ),
        )


def read_pipeline_index(folder: str | os.PathLike) -> PipelineIndex:
    """The index of a pipeline folder.

    Raises:
        ConfigError: If the folder has no ``pipeline.json`` or it is malformed.
    """
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise ConfigError(f"{folder}: not a pipeline folder (no {INDEX_NAME})")
    return PipelineIndex.from_dict(read_json_object(path), str(path))


def save_pipeline_folder(
    folder: str | os.PathLike,
    index: PipelineIndex,
    *,
    vae,
    scheduler,
    transformer=None,
    vocoder=None,
    text_encoder=None,
    quality_stats: Mapping[str, Any] | None = None,
) -> None:
    """Writes a pipeline folder; the index comes last, so its presence means complete.

    Args:
        folder: The pipeline folder (created if missing).
        index: What ``pipeline.json`` says.
        vae: The VAE.
        scheduler: The training scheduler.
        transformer: The transformer; None leaves ``transformer/`` to the caller (a
            training run exports it at every checkpoint).
        vocoder: The vocoder, written unless ``index.vocoder`` is "embedded".
        text_encoder: The text encoder, written unless ``index.text_encoder`` is
            "embedded".
        quality_stats: The training p-MOS statistics, when known.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if transformer is not None:
        transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    if index.vocoder != EMBEDDED:
        vocoder.save_pretrained(folder / index.vocoder)
    scheduler.save_pretrained(folder / "scheduler")
    if index.text_encoder != EMBEDDED:
        text_encoder.save_pretrained(folder / index.text_encoder)
    if quality_stats is not None:
        write_json(folder / STATS_NAME, quality_stats)
    write_json(folder / INDEX_NAME, index.to_dict())

"""Assembling a pipeline folder around the transformer a training run exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qamdt.audio_spec import get_audio_spec
from qamdt.diffusion.schedule import build_train_scheduler
from qamdt.generation.pipeline import INDEX_NAME, STATS_NAME, level_prefixes_from_manifest

EMBEDDED = "embedded"


def write_pipeline_parts(config, folder: Path, vae, text_encoder) -> None:
    """Writes everything but ``transformer/`` into a pipeline folder.

    The bundled text encoder and the embedded vocoder are referenced by name ("embedded")
    rather than copied, since they ship with installed packages; anything else is copied.

    Args:
        config: The run's :class:`~qamdt.training.mdt_config.MdtTrainConfig`.
        folder: The pipeline folder (``OUT/pipeline``).
        vae: The run's VAE.
        text_encoder: The run's text encoder.
    """
    from qamdt.models.vocoder import Vocoder

    folder.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(folder / "vae")
    build_train_scheduler(config.diffusion).save_pretrained(folder / "scheduler")
    vocoder_source = config.vocoder or EMBEDDED
    if vocoder_source == EMBEDDED:
        vocoder_dir = EMBEDDED
    elif vocoder_source == "griffin-lim":
        Vocoder.griffin_lim(config.audio).save_pretrained(folder / "vocoder")
        vocoder_dir = "vocoder"
    else:
        Vocoder.from_pretrained(vocoder_source).save_pretrained(folder / "vocoder")
        vocoder_dir = "vocoder"
    if config.text_encoder == EMBEDDED:
        text_dir = EMBEDDED
    else:
        text_encoder.save_pretrained(folder / "text_encoder")
        text_dir = "text_encoder"
    stats = Path(config.manifest).parent / STATS_NAME
    if stats.is_file():
        shutil.copyfile(stats, folder / STATS_NAME)
    index = {
        "audio": get_audio_spec(config.audio).to_dict(),
        "text_encoder": text_dir,
        "vocoder": vocoder_dir,
        "quality_token": config.conditioning.quality_token,
        "quality_prefix": config.conditioning.quality_prefix,
        "level_prefixes": {
            str(k): v
            for k, v in sorted(level_prefixes_from_manifest(config.manifest, config.split).items())
        },
        "trained_on": str(Path(config.manifest).resolve()),
    }
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=1))

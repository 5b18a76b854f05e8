"""Assembling a pipeline folder around the transformer a training run exports."""

from __future__ import annotations

from pathlib import Path

from qamdt.audio_spec import get_audio_spec
from qamdt.diffusion.schedule import build_train_scheduler
from qamdt.generation.folder import EMBEDDED, STATS_NAME, PipelineIndex, save_pipeline_folder
from qamdt.generation.pipeline import level_prefixes_from_manifest
from qamdt.json_files import read_json_object


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

    vocoder_source = config.vocoder or EMBEDDED
    vocoder = None
    if vocoder_source == "griffin-lim":
        vocoder = Vocoder.griffin_lim(config.audio)
    elif vocoder_source != EMBEDDED:
        vocoder = Vocoder.from_pretrained(vocoder_source)
    stats = Path(config.manifest).parent / STATS_NAME
    index = PipelineIndex(
        audio=get_audio_spec(config.audio).to_dict(),
        text_encoder=EMBEDDED if config.text_encoder == EMBEDDED else "text_encoder",
        vocoder=EMBEDDED if vocoder is None else "vocoder",
        quality_token=config.conditioning.quality_token,
        quality_prefix=config.conditioning.quality_prefix,
        level_prefixes=level_prefixes_from_manifest(config.manifest, config.split),
        trained_on=str(Path(config.manifest).resolve()),
    )
    save_pipeline_folder(
        folder,
        index,
        vae=vae,
        scheduler=build_train_scheduler(config.diffusion),
        vocoder=vocoder,
        text_encoder=text_encoder,
        quality_stats=read_json_object(stats) if stats.is_file() else None,
    )

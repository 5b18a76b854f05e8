"""Loading a pipeline folder into a :class:`~qamdt.generation.pipeline.QAMDTPipeline`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from qamdt.audio_spec import AudioSpec
from qamdt.errors import ConfigError
from qamdt.generation.acceleration import parse_dtype
from qamdt.generation.folder import EMBEDDED, STATS_NAME, read_pipeline_index


def load_pipeline(
    cls,
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    torch_dtype: str | torch.dtype | None = None,
):
    """``cls.from_pretrained``: reads every part of a pipeline folder.

    The dtype is checked before anything is read; the weights load in float32 and are
    cast once on the target device (see ``QAMDTPipeline.to``).

    Raises:
        ConfigError: If the folder or one of its parts is missing, or the dtype is unknown.
    """
    from diffusers import DDPMScheduler

    from qamdt.checkpoints import load_pretrained
    from qamdt.models.text_encoder import TextEncoder
    from qamdt.models.transformer import QualityMDTTransformer
    from qamdt.models.vae import LatentVAE
    from qamdt.models.vocoder import Vocoder

    dtype = parse_dtype(torch_dtype)
    folder = Path(path)
    index = read_pipeline_index(folder)
    parts = ["transformer", "vae", "scheduler"] + (
        [] if index.vocoder == EMBEDDED else [index.vocoder]
    )
    for part in parts:
        if not (folder / part).is_dir():
            raise ConfigError(f"{folder}: the pipeline has no '{part}/' folder")
    text_encoder = TextEncoder.from_pretrained(
        EMBEDDED if index.text_encoder == EMBEDDED else folder / index.text_encoder
    )
    stats_path = folder / STATS_NAME
    pipeline = cls(
        transformer=load_pretrained(QualityMDTTransformer.from_pretrained, folder / "transformer"),
        vae=load_pretrained(LatentVAE.from_pretrained, folder / "vae"),
        vocoder=(
            Vocoder.embedded()
            if index.vocoder == EMBEDDED
            else load_pretrained(Vocoder.from_pretrained, folder / index.vocoder)
        ),
        text_encoder=text_encoder,
        scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"),
        audio=AudioSpec.from_dict(index.audio),
        quality_token=index.quality_token,
        quality_prefix=index.quality_prefix,
        level_prefixes=index.level_prefixes,
        quality_stats=json.loads(stats_path.read_text()) if stats_path.is_file() else None,
        text_encoder_name=EMBEDDED if index.text_encoder == EMBEDDED else None,
        vocoder_name=EMBEDDED if index.vocoder == EMBEDDED else None,
        generation_defaults=index.generation_defaults,
        trained_on=index.trained_on,
    )
    pipeline.name_or_path = str(folder)
    return pipeline.to(device, dtype)

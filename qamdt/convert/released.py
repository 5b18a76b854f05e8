"""``qamdt convert released``: the authors' checkpoint as a pipeline folder.

The released Lightning checkpoint (``checkpoint_389999.ckpt``, or its ``_part_N`` pieces)
holds the whole latent diffusion model. Its ``state_dict`` is read memory-mapped and every
key is accounted for: converted (the transformer, :mod:`.released_transformer`; the VAE,
the HiFi-GAN and FLAN-T5, :mod:`.released_components`; ``scale_factor``; ``betas``, which
must equal the released schedule), or dropped on purpose (the other copy of the
transformer, the schedule's derived buffers, the VAE's loss networks, CLAP). A key in
neither group is an error that names it. Optimizer and trainer state live outside
``state_dict`` and are never read into memory.

The folder written is an ordinary pipeline folder (:class:`QAMDTPipeline`): the released
transformer options, the ``paper`` audio preset (16 kHz, 64 mels, 10.24 s), a DDPM
schedule with the released betas (DDIM samplers built from it step like LDM's, one step
past each multiple of the stride), the released quality statistics and the released
sampling as the folder's generation defaults.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from qamdt.audio_spec import get_audio_spec
from qamdt.checkpoints import CheckpointError
from qamdt.convert.checkpoint import checkpoint_parts, joined_file, load_checkpoint, state_dict_of
from qamdt.convert.released_components import (
    convert_released_vae,
    convert_released_vocoder,
    load_released_text_encoder,
    split_released_state,
)
from qamdt.convert.released_transformer import (
    convert_transformer_state,
    model_config_from_unet,
    read_authors_config,
)
from qamdt.errors import ConfigError

RELEASED_GENERATION = {
    "guidance": "released",
    "negative_quality_level": 3,
    "guidance_scale": 3.5,
    "num_inference_steps": 200,
    "scheduler": "ddim",
    "eta": 1.0,
}
"""How the authors sample: DDIM 200 (eta 1), scale 3.5, negative branch "" at level 3."""

SCHEDULE_BUFFERS = (
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
)
"""Buffers the LDM wrapper derives from ``betas``; the scheduler derives its own."""

_PARAMETERIZATION = {"eps": "epsilon", "v": "v_prediction"}


def _diffusion_settings(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    parameterization = diffusion.get("parameterization", "eps")
    if parameterization not in _PARAMETERIZATION:
        raise ConfigError(
            f"parameterization: '{parameterization}' is not supported; known: "
            f"{sorted(_PARAMETERIZATION)}"
        )
    return {
        "num_train_timesteps": int(diffusion.get("timesteps", 1000)),
        "beta_start": float(diffusion.get("linear_start", 0.0015)),
        "beta_end": float(diffusion.get("linear_end", 0.0195)),
        "prediction_type": _PARAMETERIZATION[parameterization],
    }


def _check_audio(audio: Mapping[str, Any], where: str) -> None:
    spec = get_audio_spec("paper")
    expected = {
        "sampling_rate": spec.sample_rate,
        "hop_length": spec.hop_length,
        "n_mels": spec.n_mels,
    }
    for key, value in expected.items():
        if key in audio and int(audio[key]) != value:
            raise ConfigError(
                f"{where}: preprocessing {key} {audio[key]} differs from the paper preset's "
                f"{value}; only the released 16 kHz / 64-mel models convert"
            )


def _scheduler(settings: Mapping[str, Any], state: Mapping[str, torch.Tensor]):
    from qamdt.diffusion.schedule import DiffusionConfig, build_train_scheduler

    scheduler = build_train_scheduler(DiffusionConfig(**settings))
    # LDM's DDIM visits 1, 1 + s, 1 + 2s, ...: diffusers' "leading" spacing, offset 1.
    scheduler.register_to_config(steps_offset=1, timestep_spacing="leading")
    if "betas" in state:
        betas = state["betas"].double()
        ours = scheduler.betas.double()
        if betas.shape != ours.shape or float((betas - ours).abs().max()) > 1e-6:
            raise CheckpointError(
                "betas: the checkpoint's noise schedule is not linear in sqrt(beta) from "
                f"{settings['beta_start']} to {settings['beta_end']} over "
                f"{settings['num_train_timesteps']} steps (give its --config)"
            )
    return scheduler


def convert_released(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    config: str | os.PathLike | None = None,
    weights: str = "ema",
    vae: str | os.PathLike | None = None,
    vocoder: str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
    quality_stats: Mapping[str, Any] | None = None,
    work_dir: str | os.PathLike | None = None,
    log=print,
) -> dict[str, Any]:
    """Writes a pipeline folder from the authors' released checkpoint.

    Args:
        checkpoint: The ``.ckpt`` file, or the shared name / any one of its ``_part_N``
            pieces.
        out: The pipeline folder to write.
        config: The authors' ``qa_mdt.yaml`` (None: the published hyper-parameters).
        weights: "ema" (the authors sample with these) or "raw".
        vae: A diffusers VAE folder to use instead of the checkpoint's.
        vocoder: A vocoder folder to use instead of the checkpoint's.
        text_encoder: A local FLAN-T5 folder: its tokenizer (always needed), and its
            weights when the checkpoint holds none.
        quality_stats: The p-MOS statistics to store (the released mu 3.80, sigma 0.20).
        work_dir: Where split pieces are joined (default: beside them).
        log: Progress messages.

    Returns:
        A summary: parameters, keys converted and dropped per group, seconds.

    Raises:
        CheckpointError: An unreadable file; a tensor missing, misshapen or unaccounted
            for (named).
        ConfigError: Bad options or a configuration the conversion does not support.
    """
    from accelerate import init_empty_weights

    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.models.vae import LatentVAE
    from qamdt.models.vocoder import Vocoder

    start = time.time()
    authors = read_authors_config(config) if config is not None else {}
    where = str(config) if config is not None else "published qa_mdt.yaml"
    model_config = model_config_from_unet(authors.get("unet"), f"{where}: unet_config.params")
    _check_audio(authors.get("audio", {}), where)
    diffusion = _diffusion_settings(authors.get("diffusion", {}))
    model_config["prediction_type"] = diffusion["prediction_type"]

    parts = checkpoint_parts(checkpoint)
    log(f"reading {parts[0]}" + (f" and {len(parts) - 1} more pieces" if len(parts) > 1 else ""))
    with joined_file(parts, work_dir) as path:
        state = state_dict_of(load_checkpoint(path), str(path))
        groups = split_released_state(state)

        from qamdt.models.transformer import QualityMDTTransformer

        with init_empty_weights():
            transformer = QualityMDTTransformer(**model_config)
        converted, used = convert_transformer_state(state, transformer, weights)
        # The tensors stay memory-mapped (a mapping outlives the joined file's deletion):
        # the weights are read from disk once, when they are written out.
        transformer.load_state_dict(converted, strict=True, assign=True)
        if any(p.dtype != torch.float32 for p in transformer.parameters()):
            transformer = transformer.float()
        transformer.eval()

        scheduler = _scheduler(diffusion, state)
        schedule_keys = {"betas", *SCHEDULE_BUFFERS} & set(state)
        leftover = sorted(set(groups.rest) - used - schedule_keys)
        if leftover:
            shown = ", ".join(leftover[:10]) + (" ..." if len(leftover) > 10 else "")
            raise CheckpointError(
                f"{path}: {len(leftover)} key(s) neither converted nor known to drop: {shown}"
            )
        log("converting the VAE, the vocoder and the text encoder")
        if vae is not None:
            vae_model = LatentVAE.from_pretrained(vae)
        else:
            if groups.scale_factor is None:
                raise CheckpointError(f"{path}: scale_factor missing (the latent scale)")
            vae_model = convert_released_vae(groups.vae, groups.scale_factor)
        vocoder_model = (
            Vocoder.from_pretrained(vocoder)
            if vocoder is not None
            else convert_released_vocoder(groups.vocoder)
        )
        text_model = load_released_text_encoder(groups.text_encoder, text_encoder)

    pipeline = QAMDTPipeline(
        transformer=transformer,
        vae=vae_model,
        vocoder=vocoder_model,
        text_encoder=text_model,
        scheduler=scheduler,
        audio="paper",
        quality_token=True,
        quality_prefix=True,
        quality_stats=dict(quality_stats) if quality_stats is not None else None,
        generation_defaults=dict(RELEASED_GENERATION),
    )
    log(f"writing {out}")
    pipeline.save_pretrained(out)
    transformer_keys = len([k for k in used if k in state])
    return {
        "checkpoint": [str(p) for p in parts],
        "out": str(out),
        "weights": weights,
        "transformer_parameters": sum(p.numel() for p in transformer.parameters()),
        "keys": {
            "transformer (both copies)": transformer_keys,
            "vae, vocoder, text encoder, scale_factor": len(groups.consumed),
            "schedule buffers": len(schedule_keys),
            "dropped (loss networks, CLAP)": len(groups.dropped),
            "total": len(state),
        },
        "seconds": round(time.time() - start, 1),
    }

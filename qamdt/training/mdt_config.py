"""Settings of a QA-MDT training run, read from one YAML file (``configs/mdt/*.yaml``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from qamdt.config import ConfigBase
from qamdt.diffusion.schedule import DiffusionConfig
from qamdt.errors import ConfigError, check_known_keys
from qamdt.training.precision import check_mixed_precision


@dataclasses.dataclass(frozen=True)
class ConditioningConfig(ConfigBase):
    """Which quality signals the model sees.

    Attributes:
        quality_token: Prepend the quality-level token (QA-MDT). Off: the plain MDT
            baseline, which always gets the null level.
        quality_prefix: Put the row's quality prefix ("high quality, ...") in front of its
            caption.
    """

    config_where = "conditioning"

    quality_token: bool = True
    quality_prefix: bool = True


@dataclasses.dataclass(frozen=True)
class MdtTrainConfig(ConfigBase):
    """Everything that determines a QA-MDT training run.

    Attributes:
        manifest: Manifest with audio, ``final_caption`` (else ``original_caption``),
            ``quality_level`` and ``quality_prefix``; all read from the same row.
        audio: Audio preset name ("embedded" or "paper").
        vae: Folder of the trained or released VAE (diffusers AutoencoderKL).
        text_encoder: "embedded" (bundled MiniLM) or a local T5 / encoder folder.
        vocoder: Vocoder of the preview samples: "embedded" (HiFi-GAN universal),
            "griffin-lim", or a ``vocoder/`` folder; None writes pictures only.
        model: ``QualityMDTTransformer`` config (see ``configs/mdt/*.yaml``).
        diffusion: :class:`~qamdt.diffusion.schedule.DiffusionConfig` fields.
        conditioning: :class:`ConditioningConfig` fields.
        split: Manifest split trained on.
        clip_seconds: Length of the training excerpts (None: the preset's clip length);
            shorter excerpts train faster where compute is scarce.
        cache: Folder of pre-computed latents and text states ("auto": OUT/cache, built
            before training; None: encode every batch on the fly).
        batch_size: Samples per optimiser step per process (before accumulation).
        gradient_accumulation_steps: Batches per optimiser step.
        learning_rate: AdamW learning rate (released: 8e-5).
        warmup_steps: Linear warm-up steps, constant afterwards (released: 2000).
        weight_decay: AdamW weight decay (released: 0).
        adam_betas: AdamW betas.
        grad_clip: Gradient-norm clip (paper 1.0, released code 2.0); 0 disables.
        max_steps: Optimiser steps to train.
        max_minutes: Stop (with a checkpoint) after this much training time.
        ema_decay: Maximum EMA decay (None: no EMA).
        ema_warmup: Ramp the EMA decay up as ``1 - (1 + step / inv_gamma) ** -power``
            (short runs need it; the released code uses a fixed 0.9999).
        ema_power: Power of the ramp.
        mixed_precision: "no", "bf16" (autocast in bfloat16), "fp16" (Accelerate's, with
            loss scaling), or "auto": bfloat16 where the hardware computes it natively
            (a GPU that supports it, a CPU with AVX-512 BF16 or AMX), float32 elsewhere.
            Weights, optimiser and loss stay float32 (``qamdt.training.precision``).
        gradient_checkpointing: Recompute block activations in the backward pass.
        compile: ``torch.compile`` the transformer (faster steps on a GPU after a compile
            of about a minute; slower on the CPU, see benchmarks/README.md).
        checkpoint_every: Steps between Accelerate checkpoints (and model exports).
        sample_every: Steps between preview samples (0: never).
        sample_prompt: Caption of the preview sample.
        sample_steps: DDIM steps of the preview sample.
        log_every: Steps between log lines.
        num_workers: DataLoader workers.
        seed: Seed of initialisation, data order, noise, masks and condition drops.
    """

    config_where = "train config"

    manifest: str
    vae: str
    audio: str = "embedded"
    text_encoder: str = "embedded"
    vocoder: str | None = "embedded"
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    conditioning: ConditioningConfig = dataclasses.field(default_factory=ConditioningConfig)
    split: str = "train"
    clip_seconds: float | None = None
    cache: str | None = "auto"
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 8e-5
    warmup_steps: int = 2000
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    max_steps: int = 40000
    max_minutes: float | None = None
    ema_decay: float | None = 0.9999
    ema_warmup: bool = True
    ema_power: float = 0.75
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int = 500
    sample_every: int = 0
    sample_prompt: str = "high quality, a string quartet plays a slow piece in a minor key"
    sample_steps: int = 50
    log_every: int = 10
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        positive = ("batch_size", "gradient_accumulation_steps", "max_steps", "checkpoint_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.log_every <= 0:
            raise ConfigError("need learning_rate > 0, warmup_steps >= 0 and log_every > 0")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError("ema_decay: must be within (0, 1), or null for no EMA")
        if self.clip_seconds is not None and self.clip_seconds <= 0:
            raise ConfigError("clip_seconds: must be > 0")

    @classmethod
    def prepare(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """Checks the required paths and the ``model`` section before the fields are built."""
        # Unknown keys first, so that a misspelt 'manifest' gets its hint, not "required".
        check_known_keys(values, cls, where)
        for required in ("manifest", "vae"):
            if not values.get(required):
                raise ConfigError(
                    f"{where}: '{required}' is required (set it or pass --{required})"
                )
        from qamdt.models.transformer import check_model_config

        check_model_config(dict(values.get("model") or {}), f"{where}: model")
        return values


def load_mdt_config(path: str | os.PathLike | None, **overrides: Any) -> MdtTrainConfig:
    """Reads a training config; keyword overrides that are not None replace its values."""
    return MdtTrainConfig.from_yaml(path, **overrides)

"""Noise schedules: diffusers schedulers set up with the released QA-MDT settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from qamdt.config import ConfigBase
from qamdt.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction")
LOSS_MODES = ("masked", "two_pass")
SAMPLERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "pndm": PNDMScheduler,
}


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(ConfigBase):
    """Diffusion settings of a training run (defaults: the released model).

    Attributes:
        num_train_timesteps: Diffusion steps (1000).
        beta_start: First beta; the LDM "linear" schedule interpolates sqrt(beta).
        beta_end: Last beta.
        beta_schedule: diffusers name; "scaled_linear" is LDM's linear schedule.
        prediction_type: "epsilon" (released) or "v_prediction".
        min_snr_gamma: Min-SNR loss weighting gamma (released: 5); None weights all steps
            equally (the paper's eq. 6).
        loss_mode: "masked" (the released single masked pass) or "two_pass" (upstream MDT:
            the loss of a masked and of an unmasked pass, added).
        text_drop: Per-sample probability of replacing the caption by the empty text.
        quality_drop: Per-sample probability of replacing the quality level by the null
            level.
    """

    config_where = "diffusion"

    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    min_snr_gamma: float | None = 5.0
    loss_mode: str = "masked"
    text_drop: float = 0.1
    quality_drop: float = 0.1

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"diffusion.prediction_type: unknown '{self.prediction_type}'; "
                f"known: {list(PREDICTION_TYPES)}"
            )
        if self.loss_mode not in LOSS_MODES:
            raise ConfigError(
                f"diffusion.loss_mode: unknown '{self.loss_mode}'; known: {list(LOSS_MODES)}"
            )
        for name in ("text_drop", "quality_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"diffusion.{name}: must be within [0, 1]")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ConfigError("diffusion.min_snr_gamma: must be > 0 (or null to disable)")


def build_train_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The DDPM scheduler that adds noise during training."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
    )


def build_sampler(name: str, train_config: dict[str, Any], **overrides: Any):
    """A sampling scheduler with the training schedule's betas and prediction type.

    Args:
        name: One of :data:`SAMPLERS` ("ddim" is the paper's, "dpmsolver++" the fast one).
        train_config: The training scheduler's config (``scheduler.config``).
        overrides: Extra scheduler settings (for example ``timestep_spacing``).

    Raises:
        ConfigError: On an unknown sampler name.
    """
    if name not in SAMPLERS:
        raise ConfigError(f"scheduler: unknown '{name}'; known: {sorted(SAMPLERS)}")
    settings = {"clip_sample": False, "set_alpha_to_one": False} if name == "ddim" else {}
    if name == "dpmsolver++":
        settings = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    settings.update(overrides)
    return SAMPLERS[name].from_config(train_config, **settings)


def signal_to_noise(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = alpha_bar / (1 - alpha_bar) at integer ``timesteps``."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1 - alphas_cumprod)

"""The denoising loss (paper eq. 6) with optional Min-SNR weighting."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from qamdt.diffusion.schedule import signal_to_noise


def min_snr_weights(
    snr: torch.Tensor, gamma: float | None, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023).

    For epsilon prediction the weight is ``min(SNR, gamma) / SNR``; for v prediction
    ``min(SNR, gamma) / (SNR + 1)``. ``gamma=None`` gives ones.
    """
    if gamma is None:
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def training_target(
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """What the model learns to predict: the noise, or v (per the scheduler's config)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler: DDPMScheduler,
    min_snr_gamma: float | None,
) -> torch.Tensor:
    """Mean squared error over the whole latent, weighted per sample.

    Args:
        prediction: Model output ``[B, ...]``.
        target: :func:`training_target` ``[B, ...]``.
        timesteps: ``[B]`` integer steps.
        scheduler: The training scheduler (for the SNR).
        min_snr_gamma: Min-SNR gamma, or None for the plain mean.

    Returns:
        The scalar loss.
    """
    per_sample = (prediction.float() - target.float()).square().flatten(1).mean(dim=1)
    weights = min_snr_weights(
        signal_to_noise(scheduler, timesteps), min_snr_gamma, scheduler.config.prediction_type
    )
    return (per_sample * weights).mean()

"""Sampling with part of the latent known: inpainting, outpainting and SDEdit.

Three ways a known latent steers the reverse process, all on the time axis of a
``[B, C, T, F]`` latent:

* re-imposition (RePaint, Lugmayr et al. 2022; ACE-Step's repaint and extend): before
  every step, the frames marked kept are replaced by the known latent noised to that
  step's level with the scheduler's own ``add_noise``, so the model fills the rest in
  agreement with them; after the last step they are the known latent exactly;
* resampling (RePaint's jumps): after ``jump`` steps the latent is noised back up by as
  many steps and denoised again, ``resamples - 1`` times per stretch, which lets the
  generated part agree with the kept part beyond what one pass gives;
* a truncated schedule (SDEdit, Meng et al. 2022; Stable Audio Open's init audio): the
  start is the initial latent noised to the step that ``strength`` selects, and only the
  remaining steps run.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from tqdm import tqdm

from qamdt.diffusion.sampling import GuidedDenoiser, scheduler_step_kwargs

RESAMPLING_SCHEDULERS = ("ddim", "ddpm")
"""Samplers whose ``step`` keeps no state between calls, so the schedule may run backwards."""
_STATELESS = (DDIMScheduler, DDPMScheduler)


def truncated_start(num_inference_steps: int, strength: float) -> int:
    """Index of the first step SDEdit runs, as diffusers' image-to-image pipelines pick it.

    Args:
        num_inference_steps: Steps of the whole schedule.
        strength: Share of the schedule to run, in [0, 1].

    Returns:
        ``num_inference_steps`` for strength 0 (no step runs), 0 for strength 1.
    """
    run = min(int(num_inference_steps * strength), num_inference_steps)
    return num_inference_steps - run


def repaint_schedule(steps: int, jump: int, resamples: int) -> list[tuple[int, int]]:
    """RePaint's walk over step indices: ``(from, to)`` moves, down (``to = from + 1``) or up.

    After every ``jump`` steps down, the walk goes ``jump`` steps back up and down again,
    ``resamples - 1`` times, except at the very end.

    Args:
        steps: Steps of the schedule.
        jump: Steps per stretch (RePaint's jump length).
        resamples: Passes over each stretch (RePaint's r; 1 walks straight down).

    Returns:
        The moves in order; a down move from ``i`` takes step ``i`` of the schedule.
    """
    moves: list[tuple[int, int]] = []
    left = {end: resamples - 1 for end in range(jump, steps, jump)}
    i = 0
    while i < steps:
        moves.append((i, i + 1))
        i += 1
        if left.get(i, 0) > 0:
            left[i] -= 1
            moves.append((i, i - jump))
            i -= jump
    return moves


def renoise(
    latents: torch.Tensor,
    alpha_from: torch.Tensor,
    alpha_to: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``q(x_to | x_from)`` of a variance-preserving process: noise added between two levels.

    Args:
        latents: Latent at the level whose cumulative alpha is ``alpha_from``.
        alpha_from: Cumulative alpha of the current (less noisy) level.
        alpha_to: Cumulative alpha of the target (noisier) level.
        generator: For the added noise.
    """
    ratio = (alpha_to / alpha_from).to(latents.dtype)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    return ratio.sqrt() * latents + (1 - ratio).sqrt() * noise


@torch.no_grad()
def sample_with_known(
    denoiser: GuidedDenoiser,
    scheduler,
    noise: torch.Tensor,
    known: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    num_inference_steps: int = 200,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    resamples: int = 1,
    jump: int = 1,
    progress: bool = False,
) -> torch.Tensor:
    """Denoises ``noise`` with kept frames re-imposed and/or from a noised initial latent.

    Args:
        denoiser: The guided prediction (text, levels and guidance already set).
        scheduler: A diffusers sampling scheduler.
        noise: ``[B, C, T, F]`` unit-variance starting noise.
        known: ``[B, C, T, F]`` clean latent holding the kept frames (elsewhere ignored).
        keep: ``[T]`` bool, the frames of ``known`` to keep; None or all False keeps none.
        init: ``[B, C, T, F]`` clean initial latent for SDEdit; None starts from noise.
        strength: Share of the schedule run from ``init`` (1: from pure noise, the
            initial latent ignored; 0: ``init`` returned as it is).
        num_inference_steps: Steps of the whole schedule.
        generator: For the re-imposition noise and the stochastic samplers.
        eta: DDIM eta.
        resamples: RePaint's passes per stretch (needs a sampler of
            :data:`RESAMPLING_SCHEDULERS`).
        jump: RePaint's stretch length, in steps.
        progress: Show a progress bar.

    Returns:
        ``[B, C, T, F]`` clean latents; the kept frames equal ``known`` exactly.

    Raises:
        ValueError: On resampling with a sampler that keeps state between steps.
    """
    if keep is not None and not bool(keep.any()):
        keep = None
    if resamples > 1 and keep is not None and not isinstance(scheduler, _STATELESS):
        raise ValueError(
            f"repaint_resamples: needs a sampler of {list(RESAMPLING_SCHEDULERS)}, "
            f"got {type(scheduler).__name__}"
        )
    # Timesteps on the CPU, read once before the loop (see sample_latents).
    scheduler.set_timesteps(num_inference_steps)
    first = 0 if init is None else truncated_start(num_inference_steps, strength)
    timesteps = scheduler.timesteps[first * scheduler.order :]
    if init is not None and first >= num_inference_steps:
        latents = init.clone()
    else:
        if first and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(first * scheduler.order)
        if init is None or first == 0:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(init, noise, timesteps[:1])
        walk = _walk(len(timesteps), keep, resamples, jump)
        latents = _denoise(
            denoiser, scheduler, latents, timesteps, walk, known, keep, generator, eta, progress
        )
    if keep is not None:
        latents = torch.where(keep.view(1, 1, -1, 1), known, latents)
    return latents


def _walk(steps: int, keep, resamples: int, jump: int) -> list[tuple[int, int]]:
    if keep is not None and resamples > 1:
        return repaint_schedule(steps, jump, resamples)
    return [(i, i + 1) for i in range(steps)]


def _denoise(denoiser, scheduler, latents, timesteps, moves, known, keep, generator, eta, progress):
    step_kwargs = scheduler_step_kwargs(scheduler, generator, eta)
    mask = None if keep is None else keep.view(1, 1, -1, 1)
    values = denoiser.prepare(timesteps, latents)
    alphas = scheduler.alphas_cumprod.to(latents.device)
    for start, end in tqdm(moves, disable=not progress, desc="sampling", leave=False):
        if end < start:
            # Back up from the level of step `start` (reached by the step before it) to
            # that of step `end`; the stateless samplers take any timestep next.
            latents = renoise(
                latents, alphas[int(values[start])], alphas[int(values[end])], generator
            )
            continue
        t = timesteps[start]
        if mask is not None:
            noise = torch.randn(known.shape, generator=generator).to(latents.device, known.dtype)
            noised = scheduler.add_noise(known, noise, t.reshape(1))
            latents = torch.where(mask, noised, latents)
        prediction = denoiser(latents, t, values[start])
        latents = scheduler.step(prediction, t, latents, **step_kwargs).prev_sample
    return latents

"""The MDT's training data path: the dataset, the epoch order, and model inputs per batch.

Clips come from the latent cache (latents and text states encoded once) or straight from
the manifest's audio (encoded by the VAE and the text encoder at every step). Every random
draw of a batch comes from a generator seeded by the run seed and the batch index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qamdt.audio_spec import get_audio_spec
from qamdt.diffusion.conditioning import drop_conditions
from qamdt.diffusion.sampling import pad_text
from qamdt.errors import ConfigError
from qamdt.training.mdt_config import MdtTrainConfig


class EpochPermutation(torch.utils.data.Sampler):
    """A seeded permutation per epoch (the same on every process and after a resume)."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def training_loader(
    dataset, collate, batch_size: int, num_workers: int, seed: int
) -> torch.utils.data.DataLoader:
    """The loader ``qamdt train`` draws its batches from (before Accelerate prepares it).

    Args:
        dataset: The training clips (latent cache or audio).
        collate: Its collate function.
        batch_size: Clips per batch; whole batches only.
        num_workers: Loader processes (0: in the training process).
        seed: Seeds the epoch order (:class:`EpochPermutation`).

    Raises:
        ConfigError: ``batch_size`` larger than the dataset.
    """
    if len(dataset) < batch_size:
        raise ConfigError(f"batch_size {batch_size} exceeds the {len(dataset)} training clips")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochPermutation(len(dataset), seed),
        drop_last=True,
        collate_fn=collate,
        num_workers=num_workers,
        # Page-locked batches copy to the GPU asynchronously (non_blocking in Accelerate's
        # loader); workers stay alive across epochs instead of restarting each time.
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def step_generator(seed: int, batch_index: int, rank: int) -> torch.Generator:
    """The generator of every random draw of one batch on one process."""
    return torch.Generator().manual_seed((seed * 1_000_003 + batch_index) * 1_009 + rank)


def replace_dropped_text(
    states: torch.Tensor,
    mask: torch.Tensor,
    dropped: torch.Tensor,
    null_text: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Puts the empty caption's states in the rows where the caption was dropped."""
    null_states, null_mask = null_text
    length = max(states.shape[1], null_states.shape[0])
    states, mask = pad_text(states, mask, length)
    null_states, null_mask = pad_text(null_states[None], null_mask[None], length)
    dropped = dropped.to(states.device)
    states = torch.where(dropped[:, None, None], null_states.to(states), states)
    mask = torch.where(dropped[:, None], null_mask.to(mask.device), mask)
    return states, mask


class BatchInputs:
    """Turns loader batches into model inputs (cached latents, or audio encoded on the fly)."""

    def __init__(self, config: MdtTrainConfig, vae, text_encoder, null_text, cached: bool, frames):
        self.config = config
        self.vae = vae
        self.text_encoder = text_encoder
        self.null_text = null_text
        self.cached = cached
        self.latent_frames = frames

    @torch.no_grad()
    def inputs(self, batch: dict, generator: torch.Generator, device) -> dict[str, Any]:
        """Latents, text states and mask and quality levels of one loader batch."""
        from qamdt.training.latent_cache import posterior_latents

        diffusion = self.config.diffusion
        levels = batch["quality_level"].clone()
        captions, levels, text_dropped, _ = drop_conditions(
            batch["caption"], levels, diffusion.text_drop, diffusion.quality_drop, generator
        )
        if not self.config.conditioning.quality_token:
            levels.zero_()
        if self.cached:
            mean, std = batch["latent_mean"].to(device), batch["latent_std"].to(device)
            states, mask = batch["text_states"].to(device), batch["text_mask"].to(device)
            states, mask = replace_dropped_text(states, mask, text_dropped, self.null_text)
        else:
            mean, std = posterior_latents(self.vae, batch["mel"].to(device))
            states, mask = self.text_encoder.encode(captions, device=device)
        noise = torch.randn(mean.shape, generator=generator).to(device, mean.dtype)
        latents = mean + std * noise
        if self.latent_frames is not None and latents.shape[2] > self.latent_frames:
            start = int(
                torch.randint(0, latents.shape[2] - self.latent_frames + 1, (), generator=generator)
            )
            latents = latents[:, :, start : start + self.latent_frames]
        return {
            "latents": latents.float(),
            "text_states": states,
            "text_mask": mask,
            "quality_level": levels.to(device),
        }


def load_training_data(config: MdtTrainConfig, out: Path, vae, text_encoder, accelerator):
    """The dataset and how to read it (from the latent cache, built first when missing).

    Returns:
        ``(dataset, collate, null_text, cached, latent_frames, latent_bands)``.
    """
    from qamdt.training.latent_cache import (
        LatentCacheDataset,
        build_cache,
        cache_is_complete,
        collate_cached,
    )
    from qamdt.training.mdt_data import ClipMelDataset, collate_mels, excerpt_frames, training_clips

    spec = get_audio_spec(config.audio)
    factor = vae.downsample_factor
    frames = excerpt_frames(spec, config.clip_seconds, factor)
    if config.cache:
        cache_dir = out / "cache" if config.cache == "auto" else Path(config.cache)
        if not cache_is_complete(cache_dir):
            accelerator.print(f"building the latent cache in {cache_dir}")
            summary = build_cache(config, cache_dir, vae, text_encoder, progress=True)
            accelerator.print(f"cached {summary['clips']} clips in {summary['seconds']} s")
        dataset = LatentCacheDataset(cache_dir)
        full_frames = dataset.info["frames"] // factor
        latent_frames = min(frames // factor, full_frames)
        return (
            dataset,
            collate_cached,
            dataset.null_text,
            True,
            latent_frames,
            spec.n_mels // factor,
        )
    clips, skipped = training_clips(
        config.manifest,
        config.split,
        config.conditioning.quality_token,
        config.conditioning.quality_prefix,
    )
    if skipped:
        accelerator.print(
            f"skipping {len(skipped)} rows, e.g. {skipped[0]['id']}: {skipped[0]['reason']}"
        )
    dataset = ClipMelDataset(clips, spec, frames, random_crop=True, seed=config.seed)
    null_states, null_mask = text_encoder.encode([""])
    null_text = (null_states[0].cpu(), null_mask[0].cpu())
    return dataset, collate_mels, null_text, False, frames // factor, spec.n_mels // factor

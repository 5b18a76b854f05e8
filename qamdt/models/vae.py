"""The mel VAE: a diffusers ``AutoencoderKL`` over log-mel "images".

As in AudioLDM and AudioLDM2, a log-mel spectrogram ``[B, T, n_mels]`` is treated as a
one-channel image ``[B, 1, T, n_mels]`` (time as height). The latents handed to the
diffusion model are the posterior mean (or a sample) multiplied by the config's
``scaling_factor``, which the project sets to ``1 / std`` of the training latents so that
they have about unit variance.

The ``paper`` preset loads AudioLDM2's VAE (``in/out_channels`` 1, ``latent_channels`` 8,
``block_out_channels`` [128, 256, 512], two layers per block, down-sampling by 4) from a
diffusers folder; the ``embedded`` preset trains a small one of the same layout with
:mod:`qamdt.training.vae_train`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from qamdt.checkpoints import CheckpointError
from qamdt.errors import ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SUBFOLDER = "vae"

_AUTOENCODER_KEYS = frozenset(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}


class VaeForward(NamedTuple):
    """What a training forward pass returns.

    Attributes:
        reconstruction: Decoded log-mel ``[B, T, F]``.
        mean: Posterior mean ``[B, C, T/f, F/f]`` (unscaled).
        logvar: Posterior log-variance, same shape (clamped as diffusers does).
    """

    reconstruction: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor


def _clip_by_clip(run, batch: torch.Tensor) -> torch.Tensor:
    """``run(batch)``, one item at a time on the CPU outside autograd.

    A batch's activations outgrow the CPU caches: one clip at a time encodes about 2.5x
    faster (benchmarks/bench_vae.py), with the same numbers on the embedded VAE (kernels
    chosen by batch size may round differently elsewhere). Under autograd the batch stays
    whole: it is faster there, and gradients summed clip by clip would round differently.
    """
    if batch.device.type != "cpu" or len(batch) < 2 or torch.is_grad_enabled():
        return run(batch)
    return torch.cat([run(item) for item in batch.split(1)])


def autoencoder_kwargs(config: Mapping[str, Any], where: str = "vae model config") -> dict:
    """Completes and checks ``AutoencoderKL`` keyword arguments for a one-channel mel VAE.

    ``in_channels`` and ``out_channels`` default to 1 (and must be 1); the block types
    default to one ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` per entry of
    ``block_out_channels``.

    Args:
        config: ``AutoencoderKL`` arguments.
        where: What holds them, for error messages.

    Returns:
        The completed arguments.

    Raises:
        ConfigError: On an unknown key, a channel count other than 1, or block types whose
            number differs from ``block_out_channels``.
    """
    unknown = sorted(set(config) - _AUTOENCODER_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown AutoencoderKL setting(s) {unknown}; "
            f"known: {sorted(_AUTOENCODER_KEYS)}"
        )
    kwargs = dict(config)
    for key in ("in_channels", "out_channels"):
        if kwargs.setdefault(key, 1) != 1:
            raise ConfigError(f"{where}: {key} must be 1 for mel spectrograms, got {kwargs[key]}")
    blocks = len(kwargs.get("block_out_channels", (64,)))
    kwargs.setdefault("down_block_types", ["DownEncoderBlock2D"] * blocks)
    kwargs.setdefault("up_block_types", ["UpDecoderBlock2D"] * blocks)
    for key in ("down_block_types", "up_block_types"):
        if len(kwargs[key]) != blocks:
            raise ConfigError(
                f"{where}: {key} has {len(kwargs[key])} entries but block_out_channels has {blocks}"
            )
    return kwargs


def resolve_vae_folder(path: str | os.PathLike) -> Path:
    """The folder holding the VAE's ``config.json``: ``path`` itself or ``path/vae``.

    Raises:
        ConfigError: If neither holds a ``config.json``.
    """
    path = Path(path)
    for folder in (path, path / SUBFOLDER):
        if (folder / CONFIG_NAME).is_file():
            return folder
    if not path.exists():
        raise ConfigError(f"{path}: VAE folder not found")
    raise ConfigError(
        f"{path}: no VAE here (expected {CONFIG_NAME} in this folder or in {SUBFOLDER}/)"
    )


class LatentVAE(torch.nn.Module):
    """Log-mel spectrogram <-> scaled latent, around a diffusers ``AutoencoderKL``.

    Args:
        autoencoder: A one-channel ``AutoencoderKL``.

    Raises:
        ConfigError: If the autoencoder does not take and give one channel.
    """

    def __init__(self, autoencoder: AutoencoderKL):
        super().__init__()
        config = autoencoder.config
        if config.in_channels != 1 or config.out_channels != 1:
            raise ConfigError(
                "LatentVAE needs a one-channel AutoencoderKL, got in_channels="
                f"{config.in_channels}, out_channels={config.out_channels}"
            )
        self.autoencoder = autoencoder

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LatentVAE:
        """Builds a freshly initialised VAE.

        Args:
            config: ``AutoencoderKL`` arguments, completed by :func:`autoencoder_kwargs`.

        Raises:
            ConfigError: On an unknown or inconsistent setting.
        """
        return cls(AutoencoderKL(**autoencoder_kwargs(config)))

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None
    ) -> LatentVAE:
        """Loads a diffusers ``AutoencoderKL`` folder (safetensors weights only).

        Args:
            path: The folder with ``config.json`` and ``diffusion_pytorch_model.safetensors``,
                or a pipeline folder holding it as ``vae/`` (the AudioLDM2 layout).
            torch_dtype: Load the weights in this dtype (default float32).

        Raises:
            ConfigError: If no VAE folder is found at ``path``.
            CheckpointError: If the weights are missing or do not fit the config.
        """
        folder = resolve_vae_folder(path)
        if not (folder / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{folder}: {WEIGHTS_NAME} not found")
        try:
            autoencoder = AutoencoderKL.from_pretrained(
                folder, use_safetensors=True, local_files_only=True, torch_dtype=torch_dtype
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{folder}: cannot load the VAE ({exc})") from exc
        return cls(autoencoder)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes ``config.json`` and ``diffusion_pytorch_model.safetensors`` into ``path``."""
        self.autoencoder.save_pretrained(os.fspath(path), safe_serialization=True)

    @property
    def config(self):
        """The autoencoder's (frozen) diffusers config."""
        return self.autoencoder.config

    @property
    def scaling_factor(self) -> float:
        """Factor applied to latents after encoding (and undone before decoding)."""
        return float(self.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        """Offset subtracted before scaling (0 unless the config sets ``shift_factor``)."""
        return float(self.config.shift_factor or 0.0)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent."""
        return int(self.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        """Time and frequency down-sampling of the latent."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def set_scaling_factor(self, value: float) -> None:
        """Stores a new latent scaling factor in the model config.

        Raises:
            ConfigError: If ``value`` is not a finite positive number.
        """
        value = float(value)
        if not (value > 0 and value < float("inf")):
            raise ConfigError(f"scaling_factor must be a finite number > 0, got {value}")
        self.autoencoder.register_to_config(scaling_factor=value)

    def latent_shape(self, num_frames: int, n_mels: int) -> tuple[int, int, int]:
        """Latent shape ``(C, T / f, F / f)`` of a mel with ``num_frames`` x ``n_mels``.

        Raises:
            ConfigError: If either size does not divide by :attr:`downsample_factor`.
        """
        factor = self.downsample_factor
        for name, size in (("num_frames", num_frames), ("n_mels", n_mels)):
            if size <= 0 or size % factor:
                raise ConfigError(
                    f"{name}={size} must be a positive multiple of the VAE's down-sampling "
                    f"factor {factor}"
                )
        return self.latent_channels, num_frames // factor, n_mels // factor

    def _image(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3:
            raise ValueError(f"expected a mel [batch, frames, n_mels], got {tuple(mel.shape)}")
        self.latent_shape(mel.shape[1], mel.shape[2])
        parameter = next(self.autoencoder.parameters())
        return mel.to(device=parameter.device, dtype=parameter.dtype).unsqueeze(1)

    def _decode_image(self, latents: torch.Tensor) -> torch.Tensor:
        return _clip_by_clip(lambda z: self.autoencoder.decode(z).sample, latents).squeeze(1)

    def posterior(self, mel: torch.Tensor):
        """The encoder's posterior over unscaled latents.

        Args:
            mel: ``[B, T, F]`` log-mel.

        Returns:
            A diffusers ``DiagonalGaussianDistribution`` (``mean``, ``logvar``, ``std``,
            ``sample``) over ``[B, C, T / f, F / f]``.
        """
        moments = _clip_by_clip(
            lambda image: self.autoencoder.encode(image).latent_dist.parameters, self._image(mel)
        )
        return DiagonalGaussianDistribution(moments)

    def encode(
        self,
        mel: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Log-mel to scaled latent.

        Args:
            mel: ``[B, T, F]`` natural-log mel (as :class:`~qamdt.mel.MelFrontEnd` gives,
                transposed); ``T`` and ``F`` must divide by :attr:`downsample_factor`.
            sample: Draw from the posterior instead of taking its mean.
            generator: Random generator for the sample.

        Returns:
            ``[B, C, T / f, F / f]`` latents, multiplied by :attr:`scaling_factor`.
        """
        posterior = self.posterior(mel)
        latents = posterior.sample(generator) if sample else posterior.mean
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latent to log-mel.

        Args:
            latents: ``[B, C, T', F']`` latents as :meth:`encode` returns them.

        Returns:
            ``[B, T' * f, F' * f]`` log-mel.
        """
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents [batch, {self.latent_channels}, frames, bands], got "
                f"{tuple(latents.shape)}"
            )
        parameter = next(self.autoencoder.parameters())
        latents = latents.to(device=parameter.device, dtype=parameter.dtype)
        return self._decode_image(latents / self.scaling_factor + self.shift_factor)

    def forward(
        self,
        mel: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> VaeForward:
        """Encode and decode for training (unscaled latents).

        Args:
            mel: ``[B, T, F]`` log-mel.
            sample_posterior: Decode a posterior sample (training) rather than the mean.
            generator: Random generator of the sample's noise (on the CPU, so that a run
                draws the same noise on any device).

        Returns:
            The reconstruction and the posterior's mean and log-variance.
        """
        posterior = self.posterior(mel)
        latents = posterior.mean
        if sample_posterior:
            noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
            latents = latents + posterior.std * noise.to(latents.device)
        return VaeForward(self._decode_image(latents), posterior.mean, posterior.logvar)

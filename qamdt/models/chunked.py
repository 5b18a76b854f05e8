"""Long inputs through the VAE and the vocoder in overlapping windows, crossfaded.

A whole 3-minute latent through the VAE's mid-block attention, or 3 minutes of mel through
HiFi-GAN's 512-channel layers, needs tens of gigabytes; in windows of the model's trained
length the largest activation stays that of one window whatever the length (ACE-Step
decodes the same way). Neighbouring windows overlap; in the overlap their outputs are
mixed with linear ramps, so each window's edge, where its convolutions saw padding, counts
for little. An input no longer than one window goes through the model in one call, as
before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VAE_OVERLAP = 16
"""Latent frames shared by neighbouring VAE windows."""
VOCODER_OVERLAP = 32
"""Mel frames shared by neighbouring vocoder windows."""


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Starts of windows of ``window`` units over ``length``, neighbours sharing ``overlap``.

    The last window ends at ``length`` (it may share more than ``overlap`` with the one
    before it).

    Raises:
        ValueError: Unless ``0 <= overlap < window``.
    """
    if not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap < window, got overlap {overlap}, window {window}")
    if length <= window:
        return [0]
    starts = list(range(0, length - window, window - overlap))
    return starts + [length - window]


def overlap_add(
    run: Callable[[int, int], torch.Tensor],
    length: int,
    window: int,
    overlap: int,
    scale: int,
    axis: int = -1,
) -> torch.Tensor:
    """Runs ``run`` over overlapping windows and crossfades the results into one output.

    Args:
        run: ``run(start, stop)`` gives the output of input units ``start:stop``, with
            ``(stop - start) * scale`` elements along ``axis``.
        length: Input units in all.
        window: Units per window.
        overlap: Units shared by neighbours (crossfaded).
        scale: Output elements per input unit.
        axis: The output's time axis.

    Returns:
        The output of ``length * scale`` elements along ``axis``.
    """
    starts = window_starts(length, window, overlap)
    if len(starts) == 1:
        return run(0, length)
    out = weights = None
    for i, start in enumerate(starts):
        stop = min(start + window, length)
        chunk = run(start, stop).movedim(axis, -1)
        if out is None:
            out = chunk.new_zeros(*chunk.shape[:-1], length * scale)
            weights = chunk.new_zeros(length * scale)
        ramp = _ramp(chunk.shape[-1], overlap * scale, i > 0, i < len(starts) - 1, chunk)
        out[..., start * scale : stop * scale] += chunk * ramp
        weights[start * scale : stop * scale] += ramp
    return (out / weights).movedim(-1, axis)


def _ramp(size: int, fade: int, fade_in: bool, fade_out: bool, like: torch.Tensor):
    ramp = like.new_ones(size)
    fade = min(fade, size // 2)
    if fade:
        # Half-sample offsets keep every weight above 0, so the sum never divides by 0.
        up = (torch.arange(fade, dtype=like.dtype, device=like.device) + 0.5) / fade
        if fade_in:
            ramp[:fade] = up
        if fade_out:
            ramp[size - fade :] = up.flip(0)
    return ramp


def decode_latents(
    vae, latents: torch.Tensor, window: int, overlap: int = VAE_OVERLAP
) -> torch.Tensor:
    """``vae.decode`` in windows of ``window`` latent frames.

    Args:
        vae: A :class:`~qamdt.models.vae.LatentVAE`.
        latents: ``[B, C, T, F]``.
        window: Latent frames per call (the generation window).
        overlap: Latent frames shared by neighbouring windows.

    Returns:
        ``[B, T * f, F * f]`` log-mel.
    """
    frames = latents.shape[2]
    return overlap_add(
        lambda a, b: vae.decode(latents[:, :, a:b]),
        frames,
        window,
        min(overlap, window // 2),
        vae.downsample_factor,
        axis=1,
    )


def encode_mel(vae, mel: torch.Tensor, window: int, overlap: int = VAE_OVERLAP) -> torch.Tensor:
    """``vae.encode`` (posterior mean) in windows of ``window`` latent frames.

    Args:
        vae: A :class:`~qamdt.models.vae.LatentVAE`.
        mel: ``[B, T, F]``, ``T`` a multiple of the VAE's down-sampling factor.
        window: Latent frames per call.
        overlap: Latent frames shared by neighbouring windows.

    Returns:
        ``[B, C, T / f, F / f]`` scaled latents.
    """
    f = vae.downsample_factor
    return overlap_add(
        lambda a, b: vae.encode(mel[:, a * f : b * f]),
        mel.shape[1] // f,
        window,
        min(overlap, window // 2),
        1,
        axis=2,
    )


def vocode(vocoder, mel: torch.Tensor, window: int, overlap: int = VOCODER_OVERLAP) -> torch.Tensor:
    """The vocoder in windows of ``window`` mel frames.

    Args:
        vocoder: A :class:`~qamdt.models.vocoder.Vocoder`.
        mel: ``[B, T, n_mels]``.
        window: Mel frames per call (the preset's clip).
        overlap: Mel frames shared by neighbouring windows.

    Returns:
        ``[B, T * hop]`` waveforms.
    """
    return overlap_add(
        lambda a, b: vocoder(mel[:, a:b]),
        mel.shape[1],
        window,
        min(overlap, window // 2),
        vocoder.hop_length,
        axis=1,
    )

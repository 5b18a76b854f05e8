"""Generation beyond one fresh clip: long-form, continuation, audio-to-audio, inpainting.

Every mode is one plan over the latent's time axis (:class:`ModePlan`): how many latent
frames in all, which of them are kept from an input (and how strongly, for the blended
edges of an inpainted range), and an initial latent for audio-to-audio. The plan is
sampled window by window (:func:`sample_plan`); a window is the length the model was
trained for (the audio preset's clip, unless ``window_seconds`` says otherwise), and each
window after the first re-imposes its overlap with what is already made, so the piece
goes on from it (outpainting, as ACE-Step extends). Where nothing after the end is kept
(long-form, continuation, audio-to-audio), the windows keep one spacing and the last may
run past the requested length, whose extra frames are cut: a last window pulled back to
end at the end repeats more of its neighbour and left a more audible seam
(docs/generation.md). One window is sampled at a time and the VAE and vocoder run in
windows of the preset's clip (:mod:`qamdt.models.chunked`), so memory does not grow with
the length.

* long-form: ``audio_length_in_s`` beyond one window, nothing kept;
* continuation (``continue_audio``): the input's whole latent frames are kept, the piece
  goes on to ``audio_length_in_s``;
* audio-to-audio (``init_audio``, ``strength``): SDEdit from the input's latent;
* inpainting (``inpaint_audio``, ``inpaint_ranges``): the ranges are regenerated, the rest
  kept; the first and last few frames of each range crossfade from the input's latent.

The quality level, guidance, sampler, seeds and candidates work in every mode as in a
plain call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from qamdt.diffusion.inpainting import sample_with_known
from qamdt.diffusion.sampling import GuidedDenoiser
from qamdt.diffusion.schedule import build_sampler
from qamdt.errors import ConfigError, QamdtError
from qamdt.models.chunked import decode_latents, encode_mel, vocode, window_starts

AUDIO_ARGUMENTS = {
    "continue_audio": "continuation",
    "init_audio": "audio-to-audio",
    "inpaint_audio": "inpainting",
}
"""Call argument of each input-audio mode -> the mode's name."""

BLEND_FRAMES = 4
"""Latent frames over which a regenerated stretch crossfades from what it follows."""


@dataclasses.dataclass(frozen=True)
class AudioInput:
    """An input audio, read and checked.

    Attributes:
        argument: The call argument it came from (``init_audio``, ...).
        wave: Mono float32 samples at the pipeline's rate.
        source: The file it was read from (None for an array).
        sha256: Hash of the file's bytes (of the samples' float32 bytes for an array).
    """

    argument: str
    wave: np.ndarray
    source: str | None
    sha256: str


def read_audio_input(argument: str, value: Any, sample_rate: int) -> AudioInput:
    """Reads an input audio: a file path, or ``(samples, sample_rate)``.

    The audio is downmixed to mono and resampled to ``sample_rate``.

    Raises:
        ConfigError: Naming ``argument`` (and the file) when it cannot be used.
    """
    from qamdt.audio_io import load_audio, resample, to_mono, validate_waveform

    try:
        if isinstance(value, (str, os.PathLike)):
            wave, _ = load_audio(value, sample_rate, allow_silent=True)
            with open(value, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            return AudioInput(argument, wave, os.fspath(value), digest)
        if not isinstance(value, tuple) or len(value) != 2:
            raise ConfigError(
                f"{argument}: give a file path or (samples, sample_rate), "
                f"got {type(value).__name__}"
            )
        wave, rate = np.asarray(value[0], dtype=np.float32), value[1]
        validate_waveform(wave, rate, None, allow_silent=True)
        wave = to_mono(wave) if wave.ndim == 2 else wave
        if int(rate) != sample_rate:
            wave = resample(wave, int(rate), sample_rate)
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        return AudioInput(argument, wave, None, hashlib.sha256(wave.tobytes()).hexdigest())
    except ConfigError:
        raise
    except (QamdtError, ValueError, OSError) as error:
        raise ConfigError(f"{argument}: {error}") from None


@dataclasses.dataclass
class ModePlan:
    """What one call samples, in latent frames.

    Attributes:
        mode: "long-form", "continuation", "audio-to-audio" or "inpainting".
        frames: Latent frames sampled (past ``output_frames`` where the last window
            runs past the end).
        window: Latent frames per sampling window.
        overlap: Frames a window repeats from the one before it.
        samples: Output samples (the decoded audio is cut to them).
        known: ``[1, C, frames, F]`` latent of the input (None when there is none).
        keep: ``[frames]`` weight of ``known`` in the result: 1 kept exactly, 0
            regenerated, between them blended (None: nothing kept).
        init: ``[1, C, frames, F]`` initial latent of audio-to-audio.
        strength: Audio-to-audio strength.
        inputs: Facts for the sidecar: ``mode``, the input file and its hash.
        output_frames: Latent frames of the result (None: ``frames``).
    """

    mode: str
    frames: int
    window: int
    overlap: int
    samples: int
    known: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    init: torch.Tensor | None = None
    strength: float = 1.0
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    output_frames: int | None = None

    def facts(self, pipeline) -> dict[str, Any]:
        """The sidecar's record of the mode: :attr:`inputs` and the windows in seconds."""
        spec = pipeline.spec
        per_frame = pipeline.vae.downsample_factor * spec.hop_length / spec.sample_rate
        windows = [[round(a * per_frame, 4), round(b * per_frame, 4)] for a, b in self.windows()]
        return {**self.inputs, "windows": windows}

    def windows(self) -> list[tuple[int, int]]:
        """``(start, stop)`` latent frames of every window that is sampled.

        The windows start ``overlap`` frames before the first frame that is not kept (a
        continuation's first window holds the end of the input as context), and windows
        wholly inside kept frames are left out.
        """
        offset = 0
        if self.keep is not None:
            free = torch.nonzero(self.keep < 1)
            first = int(free[0]) if len(free) else self.frames
            offset = max(0, min(first - self.overlap, self.frames - self.window))
        spans = []
        for relative in window_starts(self.frames - offset, self.window, self.overlap):
            start = offset + relative
            stop = min(start + self.window, self.frames)
            if self.keep is None or not bool((self.keep[start:stop] >= 1).all()):
                spans.append((start, stop))
        return spans


def plan_mode(pipeline, settings, audio: Mapping[str, Any]) -> ModePlan | None:
    """The plan of a call, or None for a plain call of at most one window.

    Args:
        pipeline: The :class:`~qamdt.generation.pipeline.QAMDTPipeline`.
        settings: The call's :class:`~qamdt.generation.settings.GenerationSettings`.
        audio: The input-audio arguments of the call (:data:`AUDIO_ARGUMENTS`), None
            where not given.

    Raises:
        ConfigError: Naming the argument or setting at fault (a second input audio, a
            range outside the input, a continuation no longer than its input, ...).
    """
    given = {name: value for name, value in audio.items() if value is not None}
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(sorted(given))}: give only one input audio per call")
    if settings.inpaint_ranges is not None and "inpaint_audio" not in given:
        raise ConfigError("inpaint_ranges: only with inpaint_audio (--inpaint-audio)")
    spec, factor = pipeline.spec, pipeline.vae.downsample_factor
    window = pipeline.latent_frames(settings.window_seconds)
    if window < 2:
        raise ConfigError(f"window_seconds: {settings.window_seconds} s is under 2 latent frames")
    overlap = min(window - 1, max(1, round(window * settings.window_overlap)))
    block = factor * spec.hop_length
    length = settings.audio_length_in_s
    if not given:
        frames = pipeline.latent_frames(length)
        if frames <= window:
            return None
        samples = round(length * spec.sample_rate)
        sampled = evenly_spaced_frames(frames, 0, window, overlap)
        return ModePlan(
            "long-form",
            sampled,
            window,
            overlap,
            samples,
            inputs={"mode": "long-form"},
            output_frames=frames,
        )
    [(argument, value)] = given.items()
    source = read_audio_input(argument, value, spec.sample_rate)
    wave, mode = source.wave, AUDIO_ARGUMENTS[argument]
    if len(wave) < block:
        raise ConfigError(
            f"{argument}: {source.source or '<array>'} is shorter than one latent frame "
            f"({block} samples at {spec.sample_rate} Hz)"
        )
    inputs = {
        "mode": mode,
        "input_audio": source.source,
        "input_sha256": source.sha256,
        "input_seconds": len(wave) / spec.sample_rate,
    }
    if mode == "continuation":
        kept = len(wave) // block
        if length is None:
            raise ConfigError("audio_length_in_s: continuation needs the total length (--length)")
        samples = round(length * spec.sample_rate)
        if samples <= kept * block:
            raise ConfigError(
                f"audio_length_in_s: {length} s must exceed the kept part of continue_audio "
                f"({kept * block / spec.sample_rate:.3f} s)"
            )
        frames = math.ceil(samples / block)
        sampled = evenly_spaced_frames(frames, max(0, kept - overlap), window, overlap)
        latent = _encode(pipeline, wave[: kept * block])
        known = latent.new_zeros(*latent.shape[:2], sampled, latent.shape[3])
        known[:, :, :kept] = latent
        keep = torch.zeros(sampled)
        keep[:kept] = 1.0
        return ModePlan(
            mode, sampled, window, overlap, samples, known, keep, inputs=inputs,
            output_frames=frames,
        )  # fmt: skip
    if length is not None:
        if round(length * spec.sample_rate) > len(wave):
            raise ConfigError(
                f"audio_length_in_s: {length} s is longer than {argument} "
                f"({len(wave) / spec.sample_rate:.3f} s); leave it unset to use the whole input"
            )
        wave = wave[: round(length * spec.sample_rate)]
    samples = len(wave)
    frames = math.ceil(samples / block)
    padded = np.pad(wave, (0, frames * block - samples))
    latent = _encode(pipeline, padded)
    if mode == "audio-to-audio":
        # Frames past the input start from a zero latent; they are cut from the result.
        sampled = evenly_spaced_frames(frames, 0, window, overlap)
        init = torch.nn.functional.pad(latent, (0, 0, 0, sampled - frames))
        return ModePlan(
            mode,
            sampled,
            window,
            overlap,
            samples,
            init=init,
            strength=settings.strength,
            inputs=inputs,
            output_frames=frames,
        )
    keep = inpaint_weights(settings.inpaint_ranges, frames, samples, spec, factor)
    return ModePlan(mode, frames, window, overlap, samples, latent, keep, inputs=inputs)


def evenly_spaced_frames(frames: int, start: int, window: int, overlap: int) -> int:
    """Frames that windows from ``start``, each repeating ``overlap`` of the one before, fill.

    The least count at or above ``frames``: the windows' spacing stays the same to the
    last one, which may run past ``frames`` (those frames are sampled and then cut).

    Args:
        frames: Latent frames wanted.
        start: Where the first window starts.
        window: Frames per window.
        overlap: Frames a window repeats from the one before (below ``window``).
    """
    if frames - start <= window:
        return frames
    step = window - overlap
    return start + window + math.ceil((frames - start - window) / step) * step


def inpaint_weights(ranges, frames: int, samples: int, spec, factor: int) -> torch.Tensor:
    """``[frames]`` keep weights: 0 inside the ranges, 1 outside, ramps at inner edges.

    A range covers every latent frame it touches; its first and last
    :data:`BLEND_FRAMES` frames (at most a quarter of it) ramp from the kept side.

    Raises:
        ConfigError: Naming ``inpaint_ranges`` when none is given or one ends after the
            input.
    """
    if not ranges:
        raise ConfigError("inpaint_ranges: give at least one range to regenerate (--inpaint)")
    seconds = samples / spec.sample_rate
    per_frame = factor * spec.hop_length / spec.sample_rate
    keep = torch.ones(frames)
    holes = []
    for start, end in ranges:
        if end > seconds + 1e-9:
            raise ConfigError(
                f"inpaint_ranges: ({start:g}, {end:g}) ends after inpaint_audio's {seconds:.3f} s"
            )
        a, b = int(start // per_frame), min(frames, math.ceil(end / per_frame))
        keep[a:b] = 0.0
        holes.append((a, b))
    for a, b in holes:
        ramp = min(BLEND_FRAMES, (b - a) // 4)
        steps = torch.arange(1, ramp + 1, dtype=keep.dtype) / (ramp + 1)
        if ramp and a > 0 and keep[a - 1] >= 1:
            keep[a : a + ramp] = torch.maximum(keep[a : a + ramp], steps.flip(0))
        if ramp and b < frames and keep[b] >= 1:
            keep[b - ramp : b] = torch.maximum(keep[b - ramp : b], steps)
    return keep


def _encode(pipeline, wave: np.ndarray) -> torch.Tensor:
    from qamdt.mel import MelFrontEnd

    front_end = MelFrontEnd(pipeline.spec)
    mel = front_end(torch.from_numpy(np.ascontiguousarray(wave))).T.unsqueeze(0)
    return encode_mel(pipeline.vae, mel.to(pipeline.device), pipeline.latent_frames(None)).float()


def sample_plan(
    pipeline,
    plan: ModePlan,
    settings,
    text,
    quality: torch.Tensor,
    negative,
    negative_quality: torch.Tensor | None,
    noise: torch.Tensor,
    generator: torch.Generator | None,
    progress: bool = False,
) -> torch.Tensor:
    """Samples a plan window by window.

    Args:
        pipeline: The pipeline (its transformer and training scheduler's config).
        plan: From :func:`plan_mode`.
        settings: The call's settings (sampler, steps, guidance, RePaint).
        text: Positive ``(states, mask)`` of the batch.
        quality: ``[B]`` positive levels.
        negative: Negative ``(states, mask)``.
        negative_quality: ``[B]`` negative levels.
        noise: ``[B, C, frames, F]`` starting noise.
        generator: For the noise drawn while sampling.
        progress: Show a progress bar per window.

    Returns:
        ``[B, C, output_frames, F]`` latents; the kept frames equal the input's latent
        exactly.
    """
    s = settings
    batch = len(noise)
    device = noise.device
    if plan.mode == "audio-to-audio" and plan.strength == 0:
        return plan.init[:, :, : plan.output_frames].to(device).expand(batch, -1, -1, -1).clone()
    shape = (batch, *noise.shape[1:])
    result = (
        plan.known.to(device).expand(shape).clone()
        if plan.known is not None
        else noise.new_zeros(shape)
    )
    base = plan.keep.to(device) if plan.keep is not None else noise.new_zeros(plan.frames)
    done = torch.zeros(plan.frames, dtype=torch.bool, device=device)
    for start, stop in plan.windows():
        weight = base[start:stop].clone()
        made = done[start:stop]
        weight[made] = 1.0
        # Crossfade the last few frames made by the window before into this one's.
        before = int(made.long().cumprod(0).sum())
        ramp = min(BLEND_FRAMES, before // 2)
        if 0 < before < stop - start and ramp:
            fade = torch.arange(1, ramp + 1, device=device, dtype=weight.dtype) / (ramp + 1)
            tail = slice(before - ramp, before)
            weight[tail] = torch.maximum(base[start:stop][tail], fade.flip(0))
        hard = weight >= 1
        sampler = build_sampler(s.scheduler, pipeline.scheduler.config)
        denoiser = GuidedDenoiser(
            pipeline.transformer,
            sampler,
            text,
            quality,
            negative,
            negative_quality,
            s.guidance_scale,
            s.guidance_rescale,
            s.guidance_interval,
        )
        known = result[:, :, start:stop]
        init = None
        if plan.init is not None:
            init = plan.init[:, :, start:stop].to(device).expand(batch, -1, -1, -1)
        made_here = sample_with_known(
            denoiser,
            sampler,
            noise[:, :, start:stop],
            known=known,
            keep=hard,
            init=init,
            strength=plan.strength,
            num_inference_steps=s.num_inference_steps,
            generator=generator,
            eta=s.eta,
            resamples=s.repaint_resamples,
            jump=s.repaint_jump,
            progress=progress,
        )
        w = weight.view(1, 1, -1, 1)
        blended = torch.where(hard.view(1, 1, -1, 1), known, w * known + (1 - w) * made_here)
        result[:, :, start:stop] = blended
        done[start:stop] = True
    return result[:, :, : plan.output_frames]


def decode_plan(pipeline, plan: ModePlan, latents: torch.Tensor) -> torch.Tensor:
    """Latents to log-mel, in windows of the audio preset's clip."""
    return decode_latents(pipeline.vae, latents, pipeline.latent_frames(None)).float()


def vocode_plan(pipeline, plan: ModePlan, mels: torch.Tensor) -> torch.Tensor:
    """Log-mel to waveforms cut to the plan's samples, in windows of the preset's clip."""
    audio = vocode(pipeline.vocoder, mels, pipeline.spec.clip_frames)
    return audio[:, : plan.samples]

"""Generating prompts into a folder: one WAV per output and a JSON sidecar of its settings.

The sidecar holds every setting of the call (prompt without the quality prefix, the text
the model saw, level, seed, sampler, guidance, model), the format ``qamdt evaluate``
reads. ``qamdt generate`` and the end-to-end demo both write through here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """The pipeline-call settings shared by every prompt of a run.

    Attributes:
        model: The pipeline folder (recorded in the sidecars).
        quality_level: Requested level 1-5, or None for the null level.
        negative_prompt: Text of the negative branch (None: the pipeline's default).
        negative_quality_level: Level of the negative branch (None: the guidance default).
        guidance: "quality", "released" or "negative-prompt".
        guidance_scale: Classifier-free guidance scale.
        guidance_rescale: Guidance rescale share (0 turns it off).
        guidance_interval: ``(low, high)`` timesteps where guidance applies (None: all).
        steps: Sampler steps.
        scheduler: Sampler name.
        eta: DDIM eta.
        audio_length_in_s: Seconds of audio (None: the preset's clip length).
        num_waveforms: Candidates per prompt.
    """

    model: str
    quality_level: float | None = 5.0
    negative_prompt: str | None = None
    negative_quality_level: float | None = None
    guidance: str = "quality"
    guidance_scale: float = 3.5
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    steps: int = 200
    scheduler: str = "ddim"
    eta: float = 0.0
    audio_length_in_s: float | None = None
    num_waveforms: int = 1


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def generate_to_folder(
    pipeline,
    prompts: Sequence[str],
    request: GenerationRequest,
    out_dir: str | Path,
    seed: int = 0,
    batch_size: int = 4,
    clap=None,
    progress: bool = False,
    name_prefix: str = "",
    extra: Sequence[Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Generates every prompt and writes ``NNNN_<slug>.wav`` + ``.json`` pairs.

    Args:
        pipeline: A :class:`~qamdt.generation.pipeline.QAMDTPipeline`.
        prompts: Prompts without quality prefix.
        request: Settings of every call.
        out_dir: Output folder (created if missing).
        seed: Seed of the first batch; the batch starting at prompt ``i`` uses
            ``seed + i``, so a prompt's audio does not depend on how many come before it
            in other batches, and the same prompts at another level get the same noise.
        batch_size: Prompts per pipeline call.
        clap: A ``ClapScorer`` to rank the candidates of each prompt, or None.
        progress: Show the sampler's progress bar.
        name_prefix: Put in front of every file name (e.g. ``"level5_"``).
        extra: Additional sidecar fields per prompt (e.g. ``reference_id``).

    Returns:
        The WAV files written, in order.
    """
    import torch

    from qamdt.audio_io import save_audio

    if extra is not None and len(extra) != len(prompts):
        raise ValueError("extra: give one mapping per prompt")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    repeat = request.num_waveforms
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        batch_seed = seed + start
        output = pipeline(
            chunk,
            negative_prompt=request.negative_prompt,
            quality_level=request.quality_level,
            negative_quality_level=request.negative_quality_level,
            guidance=request.guidance,
            guidance_scale=request.guidance_scale,
            guidance_rescale=request.guidance_rescale,
            guidance_interval=request.guidance_interval,
            num_inference_steps=request.steps,
            scheduler=request.scheduler,
            eta=request.eta,
            audio_length_in_s=request.audio_length_in_s,
            num_waveforms_per_prompt=repeat,
            clap=clap,
            generator=torch.Generator().manual_seed(batch_seed),
            progress=progress,
        )
        for i, (audio, prompt, text) in enumerate(
            zip(output.audios, output.prompts, output.texts, strict=True)
        ):
            index = start * repeat + i
            stem = out / f"{name_prefix}{index:04d}_{slug(prompt)}"
            save_audio(stem.with_suffix(".wav"), np.asarray(audio), output.sample_rate)
            sidecar = {
                "prompt": prompt,
                "text": text,
                "negative_prompt": request.negative_prompt,
                "quality_level": request.quality_level,
                "negative_quality_level": request.negative_quality_level,
                "guidance": request.guidance,
                "guidance_scale": request.guidance_scale,
                "guidance_rescale": request.guidance_rescale,
                "guidance_interval": (
                    list(request.guidance_interval) if request.guidance_interval else None
                ),
                "steps": request.steps,
                "scheduler": request.scheduler,
                "eta": request.eta,
                "seed": batch_seed,
                "batch_index": i,
                "num_waveforms_per_prompt": repeat,
                "rank": i % repeat if clap is not None else None,
                "clap_score": None if output.clap_scores is None else output.clap_scores[i],
                "audio_length_in_s": request.audio_length_in_s,
                "sample_rate": output.sample_rate,
                "model": str(Path(request.model).resolve()),
            }
            if extra is not None:
                sidecar.update(extra[start + i // repeat])
            stem.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
            written.append(stem.with_suffix(".wav"))
    return written

"""Generating prompts into a folder: one WAV per output and a JSON sidecar of its settings.

The sidecar (:mod:`qamdt.generation.sidecar`) holds every setting of the call, the format
``qamdt evaluate`` reads. ``qamdt generate`` and the end-to-end demo both write through here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.generation.acceleration import dtype_name
from qamdt.generation.settings import GenerationSettings
from qamdt.generation.sidecar import write_sidecar


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def generate_to_folder(
    pipeline,
    prompts: Sequence[str],
    settings: GenerationSettings,
    out_dir: str | Path,
    batch_size: int = 4,
    clap=None,
    progress: bool = False,
    name_prefix: str = "",
    extra: Sequence[Mapping[str, Any]] | None = None,
    model: str | Path | None = None,
    audio_inputs: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Generates every prompt and writes ``NNNN_<slug>.wav`` + ``.json`` pairs.

    Args:
        pipeline: A :class:`~qamdt.generation.pipeline.QAMDTPipeline`.
        prompts: Prompts without quality prefix.
        settings: Settings of every call, complete (resolve a pipeline's defaults first,
            with ``pipeline.generation_settings``). Its ``seed`` (None: 0) seeds the first
            batch; the batch starting at prompt ``i`` uses ``seed + i``, so a prompt's
            audio does not depend on how many come before it in other batches, and the
            same prompts at another level get the same noise.
        out_dir: Output folder (created if missing).
        batch_size: Prompts per pipeline call.
        clap: A ``ClapScorer`` to rank the candidates of each prompt, or None.
        progress: Show the sampler's progress bar.
        name_prefix: Put in front of every file name (e.g. ``"level5_"``).
        extra: Additional sidecar fields per prompt (e.g. ``reference_id``).
        model: The pipeline folder recorded in the sidecars (default: the folder the
            pipeline was loaded from).
        audio_inputs: The input audio of every call, by pipeline argument (``continue_audio``,
            ``init_audio`` or ``inpaint_audio``); the sidecars record the mode, the file
            and its hash.

    Returns:
        The WAV files written, in order.
    """
    import torch

    from qamdt.audio_io import save_audio

    if extra is not None and len(extra) != len(prompts):
        raise ValueError("extra: give one mapping per prompt")
    model = model if model is not None else getattr(pipeline, "name_or_path", None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    repeat = settings.num_waveforms_per_prompt
    first_seed = settings.seed or 0
    inputs = dict(audio_inputs or {})
    hardware = _hardware_facts(pipeline)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        batch = settings.replace(seed=first_seed + start)
        output = pipeline(
            chunk,
            batch,
            clap=clap,
            generator=torch.Generator().manual_seed(batch.seed),
            progress=progress,
            **inputs,
        )
        for i, (audio, prompt, text) in enumerate(
            zip(output.audios, output.prompts, output.texts, strict=True)
        ):
            index = start * repeat + i
            stem = out / f"{name_prefix}{index:04d}_{slug(prompt)}"
            save_audio(stem.with_suffix(".wav"), np.asarray(audio), output.sample_rate)
            fields = {
                "batch_index": i,
                "rank": i % repeat if clap is not None else None,
                "clap_score": None if output.clap_scores is None else output.clap_scores[i],
                "sample_rate": output.sample_rate,
                "model": str(Path(model).resolve()) if model is not None else None,
                **output.mode_facts,
                **hardware,
                **(extra[start + i // repeat] if extra is not None else {}),
            }
            write_sidecar(stem.with_suffix(".json"), batch, prompt, text, fields)
            written.append(stem.with_suffix(".wav"))
    return written


def _hardware_facts(pipeline) -> dict[str, Any]:
    """Load-time options that change the samples' rounding, when not the defaults."""
    facts: dict[str, Any] = {}
    dtypes = {name: dtype_name(dtype) for name, dtype in getattr(pipeline, "dtypes", {}).items()}
    if set(dtypes.values()) - {"float32"}:
        one = set(dtypes.values())
        facts["torch_dtype"] = one.pop() if len(one) == 1 else dtypes
    if getattr(pipeline, "vae_chunking", None) is not None:
        facts["vae_chunking"] = list(pipeline.vae_chunking)
    return facts

"""What p-MOS can generated audio reach? Real clips passed through the decoder.

Generated audio always leaves the pipeline through the VAE decoder and the vocoder, and
the MOS predictor never saw their artefacts in training. Scoring held-out clips of a
quality level before and after an encode-decode-vocode round trip shows how much of the
p-MOS scale survives that path: the figures a perfect generator would reach per level.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Held-out splits first: the VAE has seen the training clips.
SPLITS = ("test", "valid", "train")


def _clips_of_level(records: Sequence[Any], level: int) -> tuple[str | None, list]:
    for split in SPLITS:
        chosen = [r for r in records if r.split == split and r.quality_level == level]
        if chosen:
            return split, sorted(chosen, key=lambda r: r.id)
    return None, []


@torch.no_grad()
def resynthesise(pipeline, wave: np.ndarray, front_end=None) -> np.ndarray:
    """One waveform through the pipeline's mel front end, VAE (mean latent) and vocoder.

    Args:
        pipeline: A :class:`~qamdt.generation.pipeline.QAMDTPipeline`.
        wave: Mono samples at the pipeline's sample rate.
        front_end: The pipeline's :class:`~qamdt.mel.MelFrontEnd`, when the caller holds
            one; built from ``pipeline.spec`` otherwise.

    Returns:
        The resynthesised mono waveform (the mel frames are cut to a multiple of the VAE's
        down-sampling, so it can be a few hops shorter).
    """
    if front_end is None:
        from qamdt.mel import MelFrontEnd

        front_end = MelFrontEnd(pipeline.spec).to(pipeline.device)
    mel = front_end(torch.as_tensor(wave, dtype=torch.float32)).T.unsqueeze(0)
    frames = mel.shape[1] - mel.shape[1] % pipeline.vae.downsample_factor
    latents = pipeline.vae.encode(mel[:, :frames])
    audio = pipeline.vocoder(pipeline.vae.decode(latents).float())
    return audio[0].detach().cpu().numpy()


def decoder_reference(
    pipeline,
    mos_model,
    records: Sequence[Any],
    corpus_root: str | Path,
    levels: Sequence[int],
    clips_per_level: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """p-MOS of held-out clips per quality level, as recorded and after resynthesis.

    Args:
        pipeline: The generation pipeline whose decoder path is measured.
        mos_model: The MOS predictor that scores the generated audio.
        records: Manifest records; clips of each level are taken in id order from the
            test split, else the valid split, else the training split.
        corpus_root: Folder the records' audio paths are relative to.
        levels: Quality levels to measure (levels without any clips are left out).
        clips_per_level: Clips per level at most.
        seconds: Length of each excerpt (from the clip's start), as generated.

    Returns:
        One row per level that has clips: ``level``, ``split``, ``clips``,
        ``pmos_recorded``, ``pmos_resynthesised``.
    """
    from qamdt.audio_io import load_audio
    from qamdt.mel import MelFrontEnd

    front_end = MelFrontEnd(pipeline.spec).to(pipeline.device)
    rate = pipeline.spec.sample_rate
    rows = []
    for level in levels:
        split, chosen = _clips_of_level(records, level)
        chosen = chosen[:clips_per_level]
        if not chosen:
            continue
        waves = [
            load_audio(
                r.audio_path(corpus_root),
                sample_rate=rate,
                offset=r.offset,
                duration=min(seconds, r.duration),
            )[0]
            for r in chosen
        ]
        recorded = [s["omq"] for s in mos_model.predict(waves, rate)]
        copies = [resynthesise(pipeline, wave, front_end) for wave in waves]
        resynthesised = [s["omq"] for s in mos_model.predict(copies, rate)]
        rows.append(
            {
                "level": level,
                "split": split,
                "clips": len(chosen),
                "pmos_recorded": float(np.mean(recorded)),
                "pmos_resynthesised": float(np.mean(resynthesised)),
            }
        )
    return rows

"""Preview samples written during training: a mel picture and, through a vocoder, audio.

The preview samples through :class:`~qamdt.generation.pipeline.QAMDTPipeline` with the
default generation settings, the prompt as written (its own quality prefix included), at
the top quality level.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from qamdt.audio_io import save_audio
from qamdt.audio_spec import get_audio_spec


@functools.lru_cache(maxsize=2)
def _vocoder(name: str, audio: str):
    from qamdt.models.vocoder import Vocoder

    if name == "embedded":
        return Vocoder.embedded()
    if name == "griffin-lim":
        return Vocoder.griffin_lim(get_audio_spec(audio))
    return Vocoder.from_pretrained(name)


def save_mel_picture(mel: torch.Tensor, path: Path, title: str = "") -> None:
    """Draws a log-mel ``[frames, n_mels]`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 2.6))
    axis.imshow(mel.T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-11.5, vmax=2.0)
    axis.set_xlabel("frame")
    axis.set_ylabel("mel band")
    axis.set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def save_preview(
    mel: torch.Tensor, audio: str, stem: Path, vocoder: str | None = "embedded"
) -> None:
    """Writes ``stem.png`` and, when a vocoder is given and matches the preset, ``stem.wav``.

    Args:
        mel: Log-mel ``[frames, n_mels]``.
        audio: Audio preset name.
        stem: Output path without suffix.
        vocoder: "embedded", "griffin-lim", a vocoder folder, or None for the picture only.
    """
    save_mel_picture(mel, stem.with_suffix(".png"), stem.name)
    if vocoder is None:
        return
    model = _vocoder(vocoder, audio)
    if model.n_mels != mel.shape[-1]:
        return
    with torch.no_grad():
        wave = model(mel[None])[0]
    save_audio(stem.with_suffix(".wav"), np.asarray(wave.float().cpu()), model.sample_rate)


@torch.no_grad()
def sample_preview(
    config, model, ema, vae, text_encoder, out: Path, step: int, latent_size
) -> None:
    """Writes a preview sample of the EMA model to ``out/samples/step_NNNNNNN``.

    Args:
        config: The run's :class:`~qamdt.training.mdt_config.MdtTrainConfig`
            (``sample_prompt``, ``sample_steps``, ``seed``, ``vocoder``).
        model: The transformer being trained.
        ema: Its ``EMAModel``, or None.
        vae: The run's VAE.
        text_encoder: The run's text encoder.
        out: The run folder.
        step: The training step (names the files).
        latent_size: ``(frames, bands)`` of the training excerpts' latents.
    """
    from qamdt.diffusion.schedule import build_train_scheduler
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.training.ema import averaged_weights

    with averaged_weights(ema, model.parameters()):
        pipeline = QAMDTPipeline(
            model,
            vae,
            None,
            text_encoder,
            build_train_scheduler(config.diffusion),
            audio=config.audio,
            quality_token=config.conditioning.quality_token,
            quality_prefix=False,
        )
        generator = torch.Generator().manual_seed(config.seed)
        noise = torch.randn((1, vae.latent_channels, *latent_size), generator=generator)
        output = pipeline(
            config.sample_prompt,
            quality_level=model.config.num_quality_levels,
            num_inference_steps=config.sample_steps,
            generator=generator,
            latents=noise,
            output_type="mel",
        )
        mel = output.mels[0].cpu()
        save_preview(mel, config.audio, out / "samples" / f"step_{step:07d}", config.vocoder)

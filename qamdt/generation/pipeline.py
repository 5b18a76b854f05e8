"""``QAMDTPipeline``: text (and a quality level) to music, in the diffusers style.

A pipeline folder holds one sub-folder per component and a small index::

    pipeline.json       audio preset, how the model was conditioned, level -> prefix map
    transformer/        QualityMDTTransformer (save_pretrained)
    vae/                diffusers AutoencoderKL over log-mels (scaling factor in its config)
    vocoder/            SpeechT5HifiGan or Griffin-Lim settings
    text_encoder/       the text encoder and tokenizer (absent when it is the bundled
                        MiniLM, which ships with the package: pipeline.json says "embedded")
    scheduler/          the training DDPM schedule (samplers are built from it)
    quality_stats.json  mu, sigma, level edges and prefix thresholds of the training p-MOS

Guidance (``guidance=``):

* ``"quality"`` (the paper's eq. 7): positive branch = prompt with its quality prefix and
  the requested level's token; negative branch = empty text (or ``negative_prompt``) with
  the low level's token (``negative_quality_level``, default 1);
* ``"released"``: the same with the negative branch at level 3, as the authors' code does;
* ``"negative-prompt"`` (eq. 11, the baseline): no quality tokens; the negative branch is
  a text prompt, by default "low quality".
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamdt.audio_spec import AudioSpec, get_audio_spec
from qamdt.diffusion.sampling import check_guidance_interval, sample_latents
from qamdt.diffusion.schedule import build_sampler
from qamdt.errors import ConfigError
from qamdt.manifest.record import with_prefix

GUIDANCE_MODES = ("quality", "released", "negative-prompt")
INDEX_NAME = "pipeline.json"
STATS_NAME = "quality_stats.json"
DEFAULT_LEVEL_PREFIXES = {
    1: "low quality",
    2: "low quality",
    3: "medium quality",
    4: "high quality",
    5: "high quality",
}


@dataclasses.dataclass
class PipelineOutput:
    """What a pipeline call returns.

    Attributes:
        audios: ``[N, samples]`` float32 waveforms (numpy or torch per ``output_type``),
            ranked best first per prompt when CLAP re-ranking was used.
        sample_rate: Their sampling rate.
        mels: ``[N, frames, n_mels]`` decoded log-mels.
        latents: ``[N, C, T, F]`` final latents.
        prompts: The prompt each output belongs to (without the quality prefix).
        texts: The text the model was conditioned on (with the prefix, when used).
        clap_scores: CLAP score of each output against its prompt, when re-ranked.
    """

    audios: Any
    sample_rate: int
    mels: torch.Tensor
    latents: torch.Tensor
    prompts: list[str]
    texts: list[str]
    clap_scores: list[float] | None = None


def level_prefixes_from_manifest(manifest: str | os.PathLike, split: str = "train") -> dict:
    """The most common quality prefix of each level among a manifest's rows."""
    from qamdt.manifest import read_manifest

    counts: dict[int, Counter] = {}
    for record in read_manifest(manifest):
        if record.split == split and record.quality_level and record.quality_prefix:
            counts.setdefault(record.quality_level, Counter())[record.quality_prefix] += 1
    prefixes = dict(DEFAULT_LEVEL_PREFIXES)
    prefixes.update({level: c.most_common(1)[0][0] for level, c in counts.items()})
    return prefixes


class QAMDTPipeline:
    """Text-to-music generation with quality control.

    Args:
        transformer: The denoiser.
        vae: :class:`~qamdt.models.vae.LatentVAE`.
        vocoder: :class:`~qamdt.models.vocoder.Vocoder`.
        text_encoder: :class:`~qamdt.models.text_encoder.TextEncoder`.
        scheduler: The training scheduler (its config seeds every sampler).
        audio: Audio preset (or spec) the model was trained on.
        quality_token: Whether the model was trained with quality tokens.
        quality_prefix: Whether it was trained with quality prefixes in the captions.
        level_prefixes: Quality level -> text prefix.
        quality_stats: The training set's p-MOS statistics (informational).
        text_encoder_name: "embedded" when the text encoder is the bundled MiniLM.
        vocoder_name: "embedded" when the vocoder is the packaged HiFi-GAN universal.
    """

    def __init__(
        self,
        transformer,
        vae,
        vocoder,
        text_encoder,
        scheduler,
        audio: str | AudioSpec = "embedded",
        quality_token: bool = True,
        quality_prefix: bool = True,
        level_prefixes: dict | None = None,
        quality_stats: dict | None = None,
        text_encoder_name: str | None = None,
        vocoder_name: str | None = None,
    ):
        self.transformer = transformer.eval()
        self.vae = vae.eval()
        self.vocoder = vocoder.eval()
        self.text_encoder = text_encoder
        self.scheduler = scheduler
        self.spec = get_audio_spec(audio) if isinstance(audio, str) else audio
        self.quality_token = quality_token
        self.quality_prefix = quality_prefix
        prefixes = level_prefixes or DEFAULT_LEVEL_PREFIXES
        self.level_prefixes = {int(k): v for k, v in prefixes.items()}
        self.quality_stats = quality_stats
        self.text_encoder_name = text_encoder_name
        self.vocoder_name = vocoder_name
        if vocoder.n_mels != self.spec.n_mels:
            raise ConfigError(
                f"vocoder expects {vocoder.n_mels} mel bands, "
                f"the audio preset has {self.spec.n_mels}"
            )

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None):
        """Loads a pipeline folder (see the module docstring).

        Raises:
            ConfigError: If the folder or one of its parts is missing.
        """
        from diffusers import DDPMScheduler

        from qamdt.models.text_encoder import TextEncoder
        from qamdt.models.transformer import QualityMDTTransformer
        from qamdt.models.vae import LatentVAE
        from qamdt.models.vocoder import Vocoder

        folder = Path(path)
        index_path = folder / INDEX_NAME
        if not index_path.is_file():
            raise ConfigError(f"{folder}: not a pipeline folder (no {INDEX_NAME})")
        index = json.loads(index_path.read_text())
        vocoder_source = index.get("vocoder", "vocoder")
        parts = ["transformer", "vae", "scheduler"] + (
            [] if vocoder_source == "embedded" else [vocoder_source]
        )
        for part in parts:
            if not (folder / part).is_dir():
                raise ConfigError(f"{folder}: the pipeline has no '{part}/' folder")
        text_source = index.get("text_encoder", "text_encoder")
        text_encoder = TextEncoder.from_pretrained(
            text_source if text_source == "embedded" else folder / text_source
        )
        stats_path = folder / STATS_NAME
        pipeline = cls(
            transformer=QualityMDTTransformer.from_pretrained(folder / "transformer"),
            vae=LatentVAE.from_pretrained(folder / "vae"),
            vocoder=(
                Vocoder.embedded()
                if vocoder_source == "embedded"
                else Vocoder.from_pretrained(folder / vocoder_source)
            ),
            text_encoder=text_encoder,
            scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"),
            audio=AudioSpec.from_dict(index["audio"]),
            quality_token=index.get("quality_token", True),
            quality_prefix=index.get("quality_prefix", True),
            level_prefixes=index.get("level_prefixes"),
            quality_stats=json.loads(stats_path.read_text()) if stats_path.is_file() else None,
            text_encoder_name=text_source if text_source == "embedded" else None,
            vocoder_name=vocoder_source if vocoder_source == "embedded" else None,
        )
        return pipeline.to(device) if device is not None else pipeline

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes every component into one folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer")
        self.vae.save_pretrained(folder / "vae")
        vocoder_source = "embedded" if self.vocoder_name == "embedded" else "vocoder"
        if vocoder_source != "embedded":
            self.vocoder.save_pretrained(folder / "vocoder")
        self.scheduler.save_pretrained(folder / "scheduler")
        text_source = "embedded" if self.text_encoder_name == "embedded" else "text_encoder"
        if text_source != "embedded":
            self.text_encoder.save_pretrained(folder / "text_encoder")
        if self.quality_stats is not None:
            (folder / STATS_NAME).write_text(json.dumps(self.quality_stats, indent=1))
        index = {
            "audio": self.spec.to_dict(),
            "text_encoder": text_source,
            "vocoder": vocoder_source,
            "quality_token": self.quality_token,
            "quality_prefix": self.quality_prefix,
            "level_prefixes": {str(k): v for k, v in sorted(self.level_prefixes.items())},
        }
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=1))

    def to(self, device: str | torch.device) -> QAMDTPipeline:
        """Moves every model to ``device``."""
        for module in (self.transformer, self.vae, self.vocoder, self.text_encoder):
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the transformer."""
        return next(self.transformer.parameters()).device

    # ---------------------------------------------------------------- helpers

    def prefix_for(self, level: float | None) -> str | None:
        """Text prefix of a quality level (a float level uses the nearest integer)."""
        if level is None or not self.quality_prefix:
            return None
        return self.level_prefixes.get(int(round(float(level))))

    def latent_frames(self, seconds: float | None) -> int:
        """Latent frames for an audio length (default: the preset's clip)."""
        factor = self.vae.downsample_factor
        frames = self.spec.clip_frames if seconds is None else seconds * self.spec.frames_per_second
        if frames <= 0:
            raise ConfigError(f"audio_length_in_s must be > 0, got {seconds}")
        return max(1, int(np.ceil(frames / factor)))

    def _check_level(self, level: float | None, name: str) -> None:
        top = self.transformer.config.num_quality_levels
        if level is not None and float(level) != 0 and not 1 <= float(level) <= top:
            raise ConfigError(
                f"{name}: must be within 1..{top}, or 0 for the null level, got {level}"
            )

    # ---------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        quality_level: float | None = 5,
        negative_quality_level: float | None = None,
        guidance: str = "quality",
        guidance_scale: float = 3.5,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        num_inference_steps: int = 200,
        scheduler: str = "ddim",
        eta: float = 0.0,
        audio_length_in_s: float | None = None,
        num_waveforms_per_prompt: int = 1,
        clap=None,
        generator: torch.Generator | int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        progress: bool = False,
    ) -> PipelineOutput:
        """Generates music for each prompt.

        Args:
            prompt: One prompt or a list (without quality prefix: it is added here when the
                model was trained with prefixes).
            negative_prompt: Text of the negative branch (default: empty text, or "low
                quality" for ``guidance="negative-prompt"``).
            quality_level: Requested level 1..5; a float interpolates between the two
                neighbouring level embeddings; None uses the null level.
            negative_quality_level: Level of the negative branch (default: 1 for
                "quality", 3 for "released"; 0 is the null level, plain classifier-free
                guidance on the quality token).
            guidance: "quality", "released" or "negative-prompt" (module docstring).
            guidance_scale: Classifier-free guidance scale (1 turns guidance off).
            guidance_rescale: Share of the guided prediction rescaled to the positive
                branch's standard deviation (Lin et al. 2023; 0 turns it off), which
                keeps large guidance scales from over-saturating the latents.
            guidance_interval: ``(low, high)`` training timesteps outside which the
                positive branch alone is used (Kynkaeaenniemi et al. 2024); None guides
                every step. Leaving the noisiest steps unguided keeps large scales from
                narrowing the output towards a few modes.
            num_inference_steps: Sampler steps (the paper: 200 DDIM steps).
            scheduler: Sampler name: "ddim", "dpmsolver++", "unipc", "euler", "pndm",
                "ddpm".
            eta: DDIM eta (the released code uses 1.0).
            audio_length_in_s: Length of the audio (default: the preset's clip length).
            num_waveforms_per_prompt: Candidates per prompt; with ``clap`` they are ranked
                by CLAP score against the prompt, best first.
            clap: A :class:`~captioning.base.ClapScorer` for re-ranking.
            generator: A CPU ``torch.Generator`` or an integer seed.
            latents: Starting noise ``[N, C, T, F]`` (overrides the generator's noise).
            output_type: "np" or "pt" waveforms, "mel" (no vocoder), "latent" (no VAE).
            progress: Show a progress bar.

        Returns:
            A :class:`PipelineOutput`.
        """
        if guidance not in GUIDANCE_MODES:
            raise ConfigError(f"guidance: unknown '{guidance}'; known: {list(GUIDANCE_MODES)}")
        if output_type not in ("np", "pt", "mel", "latent"):
            raise ConfigError(f"output_type: unknown '{output_type}'")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ConfigError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale}")
        try:
            check_guidance_interval(guidance_interval)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if num_waveforms_per_prompt < 1 or num_inference_steps < 1:
            raise ConfigError("num_waveforms_per_prompt and num_inference_steps must be >= 1")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompt: give a string or a non-empty list of strings")
        negatives = negative_prompt
        if isinstance(negatives, str) or negatives is None:
            negatives = [negatives] * len(prompts)
        if len(negatives) != len(prompts):
            raise ConfigError("negative_prompt: give one per prompt")
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)

        use_tokens = self.quality_token and guidance != "negative-prompt"
        if not use_tokens:
            quality_level = None
        if guidance == "negative-prompt":
            negatives = [n if n is not None else "low quality" for n in negatives]
            negative_level = None
        else:
            negatives = [n or "" for n in negatives]
            default = 3 if guidance == "released" else 1
            negative_level = (
                negative_quality_level if negative_quality_level is not None else default
            )
            if not use_tokens:
                negative_level = None
        self._check_level(quality_level, "quality_level")
        self._check_level(negative_level, "negative_quality_level")

        repeat = num_waveforms_per_prompt
        prefix = self.prefix_for(quality_level) if guidance != "negative-prompt" else None
        texts = [with_prefix(p, prefix) for p in prompts for _ in range(repeat)]
        owners = [p for p in prompts for _ in range(repeat)]
        negative_texts = [n for n in negatives for _ in range(repeat)]
        batch = len(texts)
        device = self.device

        def levels(value):
            fill = 0.0 if value is None else float(value)
            return torch.full((batch,), fill, device=device)

        frames = self.latent_frames(audio_length_in_s)
        shape = (
            batch,
            self.vae.latent_channels,
            frames,
            self.spec.n_mels // self.vae.downsample_factor,
        )
        if latents is None:
            latents = torch.randn(shape, generator=generator)
        elif tuple(latents.shape) != shape:
            raise ConfigError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=torch.float32)
        dtype = next(self.transformer.parameters()).dtype
        text = self.text_encoder.encode(texts, device=device, dtype=dtype)
        negative = self.text_encoder.encode(negative_texts, device=device, dtype=dtype)
        sampler = build_sampler(scheduler, self.scheduler.config)
        latents = sample_latents(
            self.transformer,
            sampler,
            latents,
            text,
            levels(quality_level),
            negative,
            levels(negative_level),
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generator,
            eta=eta,
            progress=progress,
            guidance_rescale=guidance_rescale,
            guidance_interval=guidance_interval,
        )
        output = PipelineOutput(
            audios=None,
            sample_rate=self.spec.sample_rate,
            mels=None,
            latents=latents,
            prompts=owners,
            texts=texts,
        )
        if output_type == "latent":
            return output
        mels = self.vae.decode(latents).float()
        output.mels = mels
        if output_type == "mel":
            return output
        audio = self.vocoder(mels)
        if audio_length_in_s is not None:
            audio = audio[:, : int(round(audio_length_in_s * self.spec.sample_rate))]
        if clap is not None:
            audio, output = self._rank(audio, output, clap, prompts, repeat)
        output.audios = audio.cpu().numpy() if output_type == "np" else audio
        return output

    def _rank(self, audio: torch.Tensor, output: PipelineOutput, clap, prompts, repeat):
        waves = [a.cpu().numpy() for a in audio]
        scores = np.asarray(
            clap.text_audio_scores(waves, self.spec.sample_rate, output.prompts), dtype=np.float64
        )
        order = []
        for i in range(len(prompts)):
            block = np.arange(i * repeat, (i + 1) * repeat)
            order.extend(block[np.argsort(-scores[block], kind="stable")].tolist())
        index = torch.tensor(order)
        output.latents = output.latents[index.to(output.latents.device)]
        output.mels = output.mels[index.to(output.mels.device)]
        output.texts = [output.texts[i] for i in order]
        output.prompts = [output.prompts[i] for i in order]
        output.clap_scores = [float(scores[i]) for i in order]
        return audio[index.to(audio.device)], output

"""``QAMDTPipeline``: text (and a quality level) to music, in the diffusers style.

The pipeline folder's layout is in :mod:`qamdt.generation.folder`; a folder may carry
default generation settings, which a call uses for every setting it does not give.

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
import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from qamdt.audio_spec import AudioSpec, get_audio_spec
from qamdt.diffusion.sampling import sample_latents
from qamdt.diffusion.schedule import build_sampler
from qamdt.errors import ConfigError
from qamdt.generation.acceleration import PipelineHardware
from qamdt.generation.folder import (
    EMBEDDED,
    PipelineIndex,
    save_pipeline_folder,
)
from qamdt.generation.modes import decode_plan, plan_mode, sample_plan, vocode_plan
from qamdt.generation.settings import GenerationSettings, partial_settings
from qamdt.quality import DEFAULT_LEVEL_PREFIXES, LOW_QUALITY, with_prefix


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
        mode_facts: The mode and its inputs, as the sidecar records them: ``mode``
            ("text", "long-form", "continuation", "audio-to-audio", "inpainting"), and
            beyond one clip ``windows`` (seconds sampled together), ``input_audio``,
            ``input_sha256`` and ``input_seconds``.
    """

    audios: Any
    sample_rate: int
    mels: torch.Tensor
    latents: torch.Tensor
    prompts: list[str]
    texts: list[str]
    clap_scores: list[float] | None = None
    mode_facts: dict[str, Any] = dataclasses.field(default_factory=lambda: {"mode": "text"})


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


class QAMDTPipeline(PipelineHardware):
    """Text-to-music generation with quality control.

    Args:
        transformer: The denoiser.
        vae: :class:`~qamdt.models.vae.LatentVAE`.
        vocoder: :class:`~qamdt.models.vocoder.Vocoder`, or None for a pipeline that only
            returns mels or latents (a training run's preview).
        text_encoder: :class:`~qamdt.models.text_encoder.TextEncoder`.
        scheduler: The training scheduler (its config seeds every sampler).
        audio: Audio preset (or spec) the model was trained on.
        quality_token: Whether the model was trained with quality tokens.
        quality_prefix: Whether it was trained with quality prefixes in the captions.
        level_prefixes: Quality level -> text prefix.
        quality_stats: The training set's p-MOS statistics (informational).
        text_encoder_name: "embedded" when the text encoder is the bundled MiniLM.
        vocoder_name: "embedded" when the vocoder is the packaged HiFi-GAN universal.
        generation_defaults: Default generation settings of this pipeline, a partial
            mapping of :class:`~qamdt.generation.settings.GenerationSettings` fields
            (for example ``{"guidance": "released", "guidance_scale": 3.5,
            "num_inference_steps": 200, "eta": 1.0}``). A call uses them for every
            setting it does not give; ``save_pretrained`` writes them to
            ``pipeline.json`` and ``from_pretrained`` reads them back. Kept, checked, in
            the attribute of the same name.
        trained_on: The manifest the model was trained on (recorded in ``pipeline.json``).

    Attributes:
        name_or_path: The folder the pipeline was loaded from (None when built here).
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
        generation_defaults: Mapping[str, Any] | None = None,
        trained_on: str | None = None,
    ):
        self.transformer = transformer.eval()
        self.vae = vae.eval()
        self.vocoder = vocoder.eval() if vocoder is not None else None
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
        self.generation_defaults = partial_settings(generation_defaults, "generation_defaults")
        self.trained_on = trained_on
        self.name_or_path: str | None = None
        self._offload = None
        if vocoder is not None and vocoder.n_mels != self.spec.n_mels:
            raise ConfigError(
                f"vocoder expects {vocoder.n_mels} mel bands, "
                f"the audio preset has {self.spec.n_mels}"
            )

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        torch_dtype: str | torch.dtype | Mapping[str, str | torch.dtype] | None = None,
    ) -> QAMDTPipeline:
        """Loads a pipeline folder (see :mod:`qamdt.generation.folder`).

        Args:
            path: The folder.
            device: Where the models go (default: the CPU).
            torch_dtype: Run every model in this dtype: ``torch.float32`` (default),
                ``torch.bfloat16``, ``torch.float16`` or their names; or one per model,
                ``{"vocoder": torch.bfloat16}`` (others float32) or with a ``"default"``;
                see :meth:`to`.

        Raises:
            ConfigError: If the folder or one of its parts is missing, or the dtype is
                unknown.
        """
        from qamdt.generation.loading import load_pipeline

        return load_pipeline(cls, path, device, torch_dtype)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes every component, and the generation defaults, into one folder."""
        if self.vocoder is None:
            raise ConfigError("save_pretrained: this pipeline has no vocoder")
        index = PipelineIndex(
            audio=self.spec.to_dict(),
            text_encoder=EMBEDDED if self.text_encoder_name == EMBEDDED else "text_encoder",
            vocoder=EMBEDDED if self.vocoder_name == EMBEDDED else "vocoder",
            quality_token=self.quality_token,
            quality_prefix=self.quality_prefix,
            level_prefixes=self.level_prefixes,
            trained_on=self.trained_on,
            generation_defaults=partial_settings(self.generation_defaults, "generation_defaults"),
        )
        save_pipeline_folder(path, index, quality_stats=self.quality_stats, **self.components)

    @property
    def components(self) -> dict[str, Any]:
        """The pipeline's parts by name, as diffusers pipelines list them."""
        return {
            "transformer": self.transformer,
            "vae": self.vae,
            "vocoder": self.vocoder,
            "text_encoder": self.text_encoder,
            "scheduler": self.scheduler,
        }

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

    def generation_settings(
        self, settings: GenerationSettings | Mapping[str, Any] | None = None, **options: Any
    ) -> GenerationSettings:
        """The settings a call would use, each from the first layer that gives it.

        The layers: ``options``, ``settings``, the pipeline's :attr:`generation_defaults`,
        the global defaults. A :class:`GenerationSettings` object sets every field (the
        pipeline's defaults then do not apply); a mapping sets only its keys.

        Raises:
            ConfigError: Naming an unknown or bad setting.
        """
        return GenerationSettings.resolve(self.generation_defaults, settings, options)

    # ---------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        settings: GenerationSettings | Mapping[str, Any] | None = None,
        *,
        clap=None,
        generator: torch.Generator | int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        progress: bool = False,
        continue_audio: Any = None,
        init_audio: Any = None,
        inpaint_audio: Any = None,
        **options: Any,
    ) -> PipelineOutput:
        """Generates music for each prompt.

        The generation settings are the fields of
        :class:`~qamdt.generation.settings.GenerationSettings`, given as keyword
        arguments in the diffusers style (``guidance_scale=3.5,
        num_inference_steps=200, ...``), as a settings object or mapping, or both (the
        keywords win); what neither gives comes from the pipeline's
        :attr:`generation_defaults`, then the global defaults.

        Args:
            prompt: One prompt or a list (without quality prefix: it is added here when the
                model was trained with prefixes).
            settings: A :class:`GenerationSettings` or a partial mapping of its fields.
            clap: A :class:`~captioning.base.ClapScorer` to rank the
                ``num_waveforms_per_prompt`` candidates of each prompt by CLAP score
                against it, best first.
            generator: A CPU ``torch.Generator`` or an integer seed (default: the
                settings' ``seed``, else unseeded).
            latents: Starting noise ``[N, C, T, F]`` (overrides the generator's noise);
                without ``audio_length_in_s`` its frame count sets the length.
            output_type: "np" or "pt" waveforms, "mel" (no vocoder), "latent" (no VAE).
            progress: Show a progress bar.
            continue_audio: Continuation: a file (or ``(samples, sample_rate)``) that is
                kept and goes on to ``audio_length_in_s`` seconds.
            init_audio: Audio-to-audio (SDEdit) from this audio, by ``strength``.
            inpaint_audio: Inpainting: the ``inpaint_ranges`` of this audio are
                regenerated, the rest kept. An ``audio_length_in_s`` beyond one window
                (the preset's clip, or ``window_seconds``) samples overlapping windows;
                see :mod:`qamdt.generation.modes`.
            **options: Generation settings by name (``quality_level``,
                ``negative_prompt``, ``negative_quality_level``, ``guidance``,
                ``guidance_scale``, ``guidance_rescale``, ``guidance_interval``,
                ``num_inference_steps``, ``scheduler``, ``eta``, ``audio_length_in_s``,
                ``num_waveforms_per_prompt``, ``seed``); see
                :class:`~qamdt.generation.settings.GenerationSettings`.

        Returns:
            A :class:`PipelineOutput`.

        Raises:
            ConfigError: Naming a bad setting or argument, before any sampling.
        """
        s = self.generation_settings(settings, **options)
        if output_type not in ("np", "pt", "mel", "latent"):
            raise ConfigError(f"output_type: unknown '{output_type}'")
        if self.vocoder is None and output_type in ("np", "pt"):
            raise ConfigError(f"output_type '{output_type}': this pipeline has no vocoder")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompt: give a string or a non-empty list of strings")
        negatives = s.negative_prompt
        if isinstance(negatives, str) or negatives is None:
            negatives = [negatives] * len(prompts)
        if len(negatives) != len(prompts):
            raise ConfigError("negative_prompt: give one per prompt")
        if generator is None and s.seed is not None:
            generator = s.seed
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)

        quality_level = s.quality_level
        use_tokens = self.quality_token and s.guidance != "negative-prompt"
        if not use_tokens:
            quality_level = None
        if s.guidance == "negative-prompt":
            negatives = [n if n is not None else LOW_QUALITY for n in negatives]
            negative_level = None
        else:
            negatives = [n or "" for n in negatives]
            default = 3 if s.guidance == "released" else 1
            negative_level = (
                s.negative_quality_level if s.negative_quality_level is not None else default
            )
            if not use_tokens:
                negative_level = None
        self._check_level(quality_level, "quality_level")
        self._check_level(negative_level, "negative_quality_level")

        repeat = s.num_waveforms_per_prompt
        prefix = self.prefix_for(quality_level) if s.guidance != "negative-prompt" else None
        texts = [with_prefix(p, prefix) for p in prompts for _ in range(repeat)]
        owners = [p for p in prompts for _ in range(repeat)]
        negative_texts = [n for n in negatives for _ in range(repeat)]
        batch = len(texts)
        device = self.device

        def levels(value):
            fill = 0.0 if value is None else float(value)
            return torch.full((batch,), fill, device=device)

        inputs = {
            "continue_audio": continue_audio,
            "init_audio": init_audio,
            "inpaint_audio": inpaint_audio,
        }
        given = any(value is not None for value in inputs.values())
        # Starting noise without a length sets the length: one window, as before.
        plain = latents is not None and s.audio_length_in_s is None and not given
        with self._on_device("vae"):
            plan = None if plain else plan_mode(self, s, inputs)
        if plan is not None:
            frames = plan.frames
        elif latents is not None and s.audio_length_in_s is None:
            frames = latents.shape[2]
        else:
            frames = self.latent_frames(s.audio_length_in_s)
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
        with self._on_device("text_encoder"):
            text = self.text_encoder.encode(texts, device=device, dtype=self.dtype)
            negative = self.text_encoder.encode(negative_texts, device=device, dtype=self.dtype)
        quality, negative_quality = levels(quality_level), levels(negative_level)
        with self._on_device("transformer"):
            latents = self._sample_all(
                plan, s, latents, text, quality, negative, negative_quality, generator, progress
            )
        output = PipelineOutput(
            audios=None,
            sample_rate=self.spec.sample_rate,
            mels=None,
            latents=latents,
            prompts=owners,
            texts=texts,
        )
        if plan is not None:
            output.mode_facts = plan.facts(self)
        if output_type == "latent":
            return output
        with self._on_device("vae"):
            mels = self.decode(latents) if plan is None else decode_plan(self, plan, latents)
        output.mels = mels
        if output_type == "mel":
            return output
        with self._on_device("vocoder"):
            if plan is not None:
                audio = vocode_plan(self, plan, mels)
            else:
                audio = self.vocoder(mels)
                if s.audio_length_in_s is not None:
                    audio = audio[:, : int(round(s.audio_length_in_s * self.spec.sample_rate))]
        if clap is not None:
            audio, output = self._rank(audio, output, clap, prompts, repeat)
        output.audios = audio.cpu().numpy() if output_type == "np" else audio
        return output

    def _sample_all(
        self, plan, s, latents, text, quality, negative, negative_quality, generator, progress
    ):
        """Latents of the call: the mode's plan window by window, or one plain window."""
        if plan is not None:
            return sample_plan(
                self,
                plan,
                s,
                text,
                quality,
                negative,
                negative_quality,
                latents,
                generator,
                progress,
            )
        return self._sample(
            s, latents, text, quality, negative, negative_quality, generator, progress
        )

    def _sample(self, s, latents, text, quality, negative, negative_quality, generator, progress):
        """One window from noise: the plain text-to-music call."""
        sampler = build_sampler(s.scheduler, self.scheduler.config)
        return sample_latents(
            self.transformer,
            sampler,
            latents,
            text,
            quality,
            negative,
            negative_quality,
            guidance_scale=s.guidance_scale,
            num_inference_steps=s.num_inference_steps,
            generator=generator,
            eta=s.eta,
            progress=progress,
            guidance_rescale=s.guidance_rescale,
            guidance_interval=s.guidance_interval,
        )

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

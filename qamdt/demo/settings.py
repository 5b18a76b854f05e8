"""Every knob of the end-to-end demo: the dataclass is the schema, ``configs/demo.yaml`` the data.

The packaged ``configs/demo.yaml`` holds every value once: its top level the full run
(the whole pipeline on the 1,000-clip embedded corpus in 20-60 minutes on two CPU cores,
by the CPU's bfloat16 support), its ``quick:`` section the overrides of ``--quick``
(every stage on a few dozen clips for a few steps, for CI and tests). A user's file is
read over it, so it needs only the values it changes.

Every trainer stops on its epoch or step count; the ``*_max_minutes`` caps stay unset,
so the models do not depend on how busy the machine is.

The sampling settings (``sampler``, ``sampler_steps``, ``sampler_eta``,
``sampler_resamples``, ``guidance_*``, ``audio_seconds``, ``seed``) fill one
:class:`~qamdt.generation.settings.GenerationSettings` (:data:`SAMPLING_SETTINGS`), which
checks them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qamdt.config import ConfigBase, read_yaml
from qamdt.errors import ConfigError, check_known_keys
from qamdt.generation.acceleration import native_dtypes, parse_dtype
from qamdt.generation.settings import GenerationSettings, SettingsError

if TYPE_CHECKING:
    import torch

QUICK_SECTION = "quick"
MIRROR = "mirror"
# The demo's sampling settings -> the generation settings they set (GenerationSettings).
SAMPLING_SETTINGS = {
    "sampler": "scheduler",
    "sampler_steps": "num_inference_steps",
    "sampler_eta": "eta",
    "sampler_resamples": "repaint_resamples",
    "guidance_scale": "guidance_scale",
    "guidance_rescale": "guidance_rescale",
    "guidance_interval": "guidance_interval",
    "audio_seconds": "audio_length_in_s",
    "seed": "seed",
}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"
"""The packaged demo settings: every value of the full and the quick run."""


@dataclasses.dataclass(frozen=True)
class DemoSettings(ConfigBase):
    """Settings of one demo run (values in ``configs/demo.yaml``, recorded in ``stages.json``).

    Attributes:
        seed: Master seed of every stage (corpus, training, sampling, controls).
        clips: Corpus clips to build.
        variants_per_piece: Renderings of each score in the corpus.
        max_clips_per_variant: Consecutive clips cut from one rendering. With one clip per
            piece, a small corpus still fills the valid and test splits.
        mos_epochs: MOS-predictor epochs.
        mos_batch_size: MOS-predictor clips per step.
        mos_max_minutes: Cap on MOS-predictor training time (None: none; a cap that is
            reached changes the result, so the demo sets none).
        mos_patience: Epochs without a better validation SRCC before the MOS predictor
            stops (None: run every epoch).
        mos_config: The MOS training config the demo's values override (real-music
            sources, hold-outs, degradation versions, ranking term) for the model that
            labels the corpus.
        mos_real_files_per_source: At most this many files of each real-music source
            (None: all).
        judge_config: The MOS training config of the judge, the p-MOS model that scores
            generated audio (the edit and evaluate stages, the app); it shares the other
            ``mos_*`` values. None: the labelling model judges.
        judge_epochs: The judge's epochs.
        level_shares: Shares of quality levels 1-5 among the labelled clips (quantile
            levels).
        captioner_epochs: Embedded-captioner epochs.
        captioner_batch_size: Embedded-captioner crops per step.
        captioner_max_minutes: Cap on embedded-captioner training time (None: none).
        clap_epochs: Embedded-CLAP epochs.
        clap_batch_size: Embedded-CLAP clips per contrastive step.
        clap_max_minutes: Cap on embedded-CLAP training time (None: none).
        refine_rho1: Threshold on S(generated caption, audio), eq. 8 (a number or "pX").
        refine_rho2: Threshold on S(original caption, audio), eq. 9.
        refine_rho3: Merge threshold on S(original, generated), eq. 10.
        vae_steps: VAE optimiser steps.
        vae_batch_size: VAE crops per step.
        vae_max_minutes: Cap on VAE training time (None: none).
        mdt_config: The MDT training preset the demo's values override (relative paths
            are looked up in the working directory, then in the project folder).
        mdt_model: Overrides of the preset's ``model`` section (size of the transformer).
        mdt_clip_seconds: Length of the MDT's training excerpts. Half the generated
            length: in a fixed CPU budget, shorter excerpts buy more optimiser steps, and the
            quality cues (noise floor, clipping, band limits) are local.
        mdt_batch_size: MDT samples per step.
        mdt_learning_rate: MDT AdamW learning rate.
        mdt_warmup_steps: MDT learning-rate warm-up steps.
        mdt_max_steps: MDT optimiser steps (each of the two models, trained side by side
            when ``stage_processes`` allows; no time cap, so both train the same steps).
        mdt_checkpoint_every: MDT steps between checkpoints.
        prompts: Evaluation prompts (true captions of clean test clips).
        levels: Quality levels of the sweep.
        sampler: Sampler of generation.
        sampler_steps: Sampler steps.
        sampler_eta: DDIM eta (0 samples deterministically; the released code uses 1.0).
        sampler_resamples: RePaint's passes over each stretch of steps where frames are
            kept (the editing stage's long pieces, continuation and inpainting; 1: none).
        guidance_scale: Classifier-free guidance scale.
        guidance_rescale: Share of the guided clean latent rescaled to the positive
            branch's spread (keeps guidance from over-saturating level-5 latents).
        guidance_interval: ``(low, high)`` timesteps (of 0-1000) where guidance applies;
            the noisiest steps above ``high`` take the positive branch alone, which keeps
            level 5's distribution close to real clean clips (Kynkaeaenniemi et al. 2024).
            None guides every step.
        negative_quality_level: Level of the negative guidance branch: a level 0-5 (0 is
            the null level), or "mirror" for level ``6 - k`` when generating level ``k``:
            level 5 against level 1 as in the paper's eq. 7, level 1 against level 5.
        audio_seconds: Length of each generated clip.
        generate_batch_size: Prompts per sampler call.
        torch_dtype: The generation pipelines' dtypes, as ``qamdt generate --torch-dtype``
            takes them: ``float32``, or ``vocoder=bfloat16,transformer=bfloat16`` for
            the transformer and the vocoder's residual blocks in bfloat16 (the same p-MOS
            as float32, and faster on CPUs with bfloat16 instructions; docs/speed.md);
            on other CPUs those models run in float32 (:meth:`pipeline_dtypes`).
        negative_prompt: Negative text of the paper's eq. 11 baseline.
        eval_batch_size: Clips per forward pass in evaluation.
        examples_per_level: Clips per level shown (with spectrograms) in the report.
        decoder_reference_clips: Held-out clips per level scored as recorded and after
            the VAE and vocoder (the report's decoder reference).
        pitch_fmin: Lowest pitch of the periodicity search, Hz.
        pitch_fmax: Highest pitch of the periodicity search, Hz.
        pitch_envelope_hz: Width of the frequency smoothing that turns a clip's long-term
            spectrum into the envelope of its matched noise.
        min_pmos_gain: p-MOS that level 5 must gain over level 1 for the check to pass.
        frechet_tolerance_se: Standard errors of the difference (jackknife over prompts)
            by which level 5's Frechet distance may exceed a baseline's and still pass the
            "as close to clean audio" checks.
        stage_processes: Independent stages run side by side, each in its own process
            with an equal share of the CPU threads (1: one after the other). On two cores
            two single-thread trainings of small models finish sooner than one after the
            other with two threads each (docs/demo.md).
    """

    seed: int
    clips: int
    variants_per_piece: int
    max_clips_per_variant: int
    mos_epochs: int
    mos_batch_size: int
    mos_max_minutes: float | None
    mos_patience: int | None
    mos_config: str
    mos_real_files_per_source: int | None
    judge_config: str | None
    judge_epochs: int
    level_shares: tuple[float, ...]
    captioner_epochs: int
    captioner_batch_size: int
    captioner_max_minutes: float | None
    clap_epochs: int
    clap_batch_size: int
    clap_max_minutes: float | None
    refine_rho1: float | str
    refine_rho2: float | str
    refine_rho3: float | str
    vae_steps: int
    vae_batch_size: int
    vae_max_minutes: float | None
    mdt_config: str
    mdt_model: dict[str, Any]
    mdt_clip_seconds: float
    mdt_batch_size: int
    mdt_learning_rate: float
    mdt_warmup_steps: int
    mdt_max_steps: int
    mdt_checkpoint_every: int
    prompts: int
    levels: tuple[int, ...]
    sampler: str
    sampler_steps: int
    sampler_eta: float
    sampler_resamples: int
    guidance_scale: float
    guidance_rescale: float
    guidance_interval: tuple[float, float] | None
    negative_quality_level: float | str
    audio_seconds: float
    generate_batch_size: int
    torch_dtype: str
    negative_prompt: str
    eval_batch_size: int
    examples_per_level: int
    decoder_reference_clips: int
    pitch_fmin: float
    pitch_fmax: float
    pitch_envelope_hz: float
    min_pmos_gain: float
    frechet_tolerance_se: float
    stage_processes: int

    config_where = "demo settings"
    config_noun = "setting"

    def __post_init__(self):
        positive = [
            f.name
            for f in dataclasses.fields(self)
            if f.type in ("int", "float")
            and f.name not in ("seed", "mdt_warmup_steps", "sampler_eta", "guidance_rescale")
            and getattr(self, f.name) <= 0
        ]
        if positive:
            raise ConfigError(f"demo settings: {positive} must be > 0")
        capped = [
            f.name
            for f in dataclasses.fields(self)
            if f.name.endswith("_max_minutes") and getattr(self, f.name) is not None
        ]
        if any(getattr(self, name) <= 0 for name in capped):
            raise ConfigError(f"demo settings: {capped} must be > 0 (or null: no cap)")
        if self.mos_patience is not None and self.mos_patience <= 0:
            raise ConfigError("demo settings: mos_patience must be > 0 (or null)")
        if self.mdt_warmup_steps < 0:
            raise ConfigError("demo settings: mdt_warmup_steps must be >= 0")
        if len(self.level_shares) != 5:
            raise ConfigError("demo settings: level_shares needs five shares (levels 1-5)")
        if not self.levels or any(not 1 <= level <= 5 for level in self.levels):
            raise ConfigError(f"demo settings: levels must lie within 1..5, got {self.levels}")
        try:
            self.generation_settings()
        except SettingsError as error:
            key = {name: key for key, name in SAMPLING_SETTINGS.items()}[error.field]
            raise ConfigError(f"demo settings: {key}: {error.reason}") from None
        negative = self.negative_quality_level
        if negative != MIRROR and not (isinstance(negative, (int, float)) and 0 <= negative <= 5):
            raise ConfigError(
                f"demo settings: negative_quality_level must be a level 0-5 or "
                f"'{MIRROR}', got {negative!r}"
            )
        parse_dtype(self.torch_dtype, "demo settings: torch_dtype")
        if not 0 < self.pitch_fmin < self.pitch_fmax:
            raise ConfigError("demo settings: need 0 < pitch_fmin < pitch_fmax")

    @classmethod
    def full(cls) -> DemoSettings:
        """The packaged full-run settings (``configs/demo.yaml``)."""
        return load_demo_settings(None)

    @classmethod
    def quick(cls) -> DemoSettings:
        """The ``--quick`` settings: every stage on a few dozen clips for a few steps."""
        return load_demo_settings(None, quick=True)

    @classmethod
    def from_recorded(cls, given: Mapping[str, Any], log=print) -> DemoSettings:
        """The settings a run recorded in its ``stages.json``, as this version reads them.

        A run made by another version may lack settings this one has (they take the full
        run's values) or hold some it no longer has (left out); ``log`` names both.
        """
        full = dataclasses.asdict(cls.full())
        for what, names in (
            ("not known here", set(given) - set(full)),
            ("missing", set(full) - set(given)),
        ):
            if names:
                log(f"settings of the run {what}: {', '.join(sorted(names))}")
        return cls.from_dict({**full, **{k: v for k, v in given.items() if k in full}})

    def generation_settings(self) -> GenerationSettings:
        """The generation settings every demo call shares (levels and guidance per call).

        Raises:
            SettingsError: Naming the generation setting that is bad.
        """
        return GenerationSettings(
            **{name: getattr(self, key) for key, name in SAMPLING_SETTINGS.items()}
        )

    def pipeline_dtypes(self) -> dict[str, torch.dtype]:
        """``torch_dtype`` for the demo's pipelines, which run on the CPU.

        Its bfloat16 models run in float32 where the CPU lacks bfloat16 instructions
        (:func:`~qamdt.generation.acceleration.native_dtypes`).
        """
        return native_dtypes(parse_dtype(self.torch_dtype), "cpu")

    def level_settings(self, level: int) -> GenerationSettings:
        """The quality-aware MDT's settings at ``level`` (its negative level per the setting)."""
        return self.generation_settings().replace(
            quality_level=level, negative_quality_level=self.negative_level_for(level)
        )

    def baseline_settings(self, negative_prompt: str) -> GenerationSettings:
        """The plain MDT's settings: no level, guided away from ``negative_prompt``."""
        return self.generation_settings().replace(
            quality_level=None, negative_prompt=negative_prompt, guidance="negative-prompt"
        )

    def negative_level_for(self, level: int) -> float:
        """The negative branch's quality level when generating ``level``."""
        if self.negative_quality_level == MIRROR:
            return 6 - level
        return float(self.negative_quality_level)

    def replace(self, **changes: Any) -> DemoSettings:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolve_path(self, path: str) -> Path:
        """A settings path, found in the working directory or else the project folder."""
        candidate = Path(path)
        if candidate.is_absolute() or candidate.exists():
            return candidate
        return PROJECT_ROOT / candidate


def load_demo_settings(path: str | os.PathLike | None, quick: bool = False) -> DemoSettings:
    """Reads demo settings: the packaged values, then ``path``'s over them.

    The layers, each over the one before: the top level of ``configs/demo.yaml``, the top
    level of ``path``, and with ``quick`` the ``quick:`` section of each in the same order.

    Args:
        path: A YAML file of settings to change (any subset, with an optional ``quick:``
            section); ``None`` reads the packaged values alone.
        quick: Apply the quick sections.

    Raises:
        ConfigError: On a missing or malformed file or an unknown setting (named).
    """
    layers = [DEFAULT_CONFIG]
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG.resolve():
        layers.append(Path(path))
    sections = [_read_settings(layer) for layer in layers]
    values: dict[str, Any] = {}
    for top, _ in sections:
        values.update(top)
    if quick:
        for _, overrides in sections:
            values.update(overrides)
    return DemoSettings.from_dict(values, where=" over ".join(str(p) for p in reversed(layers)))


def _read_settings(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A settings file's top level and its ``quick:`` section, their keys checked."""
    values = read_yaml(path)
    overrides = values.pop(QUICK_SECTION, None) or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{path}: '{QUICK_SECTION}' must be a mapping of settings")
    check_known_keys(values, DemoSettings, str(path), noun="setting")
    check_known_keys(overrides, DemoSettings, f"{path}: {QUICK_SECTION}", noun="setting")
    return values, dict(overrides)

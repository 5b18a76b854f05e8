"""Every knob of the end-to-end demo, in one dataclass, with its full and quick values.

The full values run the whole pipeline on the 1,000-clip embedded corpus within about
half an hour on two CPU cores; the quick values (``--quick``) run every stage on a few
dozen clips for a few steps, for CI and tests. ``configs/demo.yaml`` repeats both sets:
its top level holds the full values and its ``quick:`` section the quick overrides.

In the full run every trainer stops on its epoch or step count; the minute budgets are
only caps for slower machines, so the models no longer depend on how busy the machine is.

The sampling settings (``sampler``, ``sampler_steps``, ``sampler_eta``, ``guidance_*``,
``audio_seconds``, ``seed``) fill one
:class:`~qamdt.generation.settings.GenerationSettings` (:data:`SAMPLING_SETTINGS`), which
checks them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qamdt.errors import ConfigError, check_known_keys
from qamdt.generation.settings import GenerationSettings, SettingsError

QUICK_SECTION = "quick"
MIRROR = "mirror"
# The demo's sampling settings -> the generation settings they set (GenerationSettings).
SAMPLING_SETTINGS = {
    "sampler": "scheduler",
    "sampler_steps": "num_inference_steps",
    "sampler_eta": "eta",
    "guidance_scale": "guidance_scale",
    "guidance_rescale": "guidance_rescale",
    "guidance_interval": "guidance_interval",
    "audio_seconds": "audio_length_in_s",
    "seed": "seed",
}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Settings of one demo run (the defaults are the full run's).

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
            sources, hold-outs, degradation versions, ranking term).
        mos_real_files_per_source: At most this many files of each real-music source
            (None: all).
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
        mdt_max_steps: MDT optimiser steps (each of the two models).
        mdt_max_minutes: Cap on each MDT's training time (None: none).
        mdt_checkpoint_every: MDT steps between checkpoints.
        prompts: Evaluation prompts (true captions of clean test clips).
        levels: Quality levels of the sweep.
        sampler: Sampler of generation.
        sampler_steps: Sampler steps.
        sampler_eta: DDIM eta (0 samples deterministically; the released code uses 1.0).
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
    """

    seed: int = 0
    clips: int = 1000
    variants_per_piece: int = 2
    max_clips_per_variant: int = 3
    mos_epochs: int = 30
    mos_batch_size: int = 16
    mos_max_minutes: float | None = None
    mos_patience: int | None = 5
    mos_config: str = "configs/mos/corpus.yaml"
    mos_real_files_per_source: int | None = None
    level_shares: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    captioner_epochs: int = 22
    captioner_batch_size: int = 32
    captioner_max_minutes: float | None = None
    clap_epochs: int = 5
    clap_batch_size: int = 64
    clap_max_minutes: float | None = None
    refine_rho1: float | str = "p8.9"
    refine_rho2: float | str = "p15"
    refine_rho3: float | str = "p90"
    vae_steps: int = 380
    vae_batch_size: int = 16
    vae_max_minutes: float | None = None
    mdt_config: str = "configs/mdt/embedded.yaml"
    mdt_model: dict[str, Any] = dataclasses.field(default_factory=dict)
    mdt_clip_seconds: float = 2.5
    mdt_batch_size: int = 16
    mdt_learning_rate: float = 1.0e-3
    mdt_warmup_steps: int = 50
    mdt_max_steps: int = 870
    mdt_max_minutes: float | None = None
    mdt_checkpoint_every: int = 100
    prompts: int = 20
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    sampler: str = "ddim"
    sampler_steps: int = 25
    sampler_eta: float = 0.0
    guidance_scale: float = 8.0
    guidance_rescale: float = 0.7
    guidance_interval: tuple[float, float] | None = (0.0, 700.0)
    negative_quality_level: float | str = "mirror"
    audio_seconds: float = 5.0
    generate_batch_size: int = 5
    negative_prompt: str = "low quality"
    eval_batch_size: int = 8
    examples_per_level: int = 2
    decoder_reference_clips: int = 8
    pitch_fmin: float = 60.0
    pitch_fmax: float = 500.0
    pitch_envelope_hz: float = 500.0
    min_pmos_gain: float = 1.0

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
        if not 0 < self.pitch_fmin < self.pitch_fmax:
            raise ConfigError("demo settings: need 0 < pitch_fmin < pitch_fmax")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "demo settings") -> DemoSettings:
        """Builds settings from a mapping, naming unknown keys.

        Raises:
            ConfigError: On an unknown key or a bad value.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
        check_known_keys(values, cls, where, noun="setting")
        values = dict(values)
        for name in ("level_shares", "levels", "guidance_interval"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if "mdt_model" in values:
            values["mdt_model"] = dict(values["mdt_model"] or {})
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"{where}: {error}") from None

    @classmethod
    def quick(cls) -> DemoSettings:
        """The ``--quick`` settings: every stage on a few dozen clips for a few steps."""
        return cls.from_dict(QUICK_OVERRIDES, "quick demo settings")

    def generation_settings(self) -> GenerationSettings:
        """The generation settings every demo call shares (levels and guidance per call).

        Raises:
            SettingsError: Naming the generation setting that is bad.
        """
        return GenerationSettings(
            **{name: getattr(self, key) for key, name in SAMPLING_SETTINGS.items()}
        )

    def negative_level_for(self, level: int) -> float:
        """The negative branch's quality level when generating ``level``."""
        if self.negative_quality_level == MIRROR:
            return 6 - level
        return float(self.negative_quality_level)

    def replace(self, **changes: Any) -> DemoSettings:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON form, recorded in the run's ``stages.json``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def resolve_path(self, path: str) -> Path:
        """A settings path, found in the working directory or else the project folder."""
        candidate = Path(path)
        if candidate.is_absolute() or candidate.exists():
            return candidate
        return PROJECT_ROOT / candidate


QUICK_OVERRIDES: dict[str, Any] = {
    "clips": 40,
    "variants_per_piece": 1,
    "max_clips_per_variant": 1,
    "mos_epochs": 2,
    "mos_batch_size": 8,
    "captioner_epochs": 1,
    "captioner_batch_size": 16,
    "clap_epochs": 1,
    "clap_batch_size": 16,
    "vae_steps": 4,
    "vae_batch_size": 4,
    "mdt_model": {"hidden_size": 32, "num_heads": 2, "encoder_depth": 2, "decoder_depth": 1},
    "mdt_clip_seconds": 2.0,
    "mdt_batch_size": 4,
    "mdt_warmup_steps": 1,
    "mdt_max_steps": 5,
    "mdt_checkpoint_every": 5,
    "prompts": 2,
    "sampler_steps": 2,
    "audio_seconds": 2.0,
    "generate_batch_size": 2,
    "examples_per_level": 1,
    "decoder_reference_clips": 2,
}


def load_demo_settings(path: str | os.PathLike | None, quick: bool = False) -> DemoSettings:
    """Reads demo settings: the file's top level, then its ``quick:`` section if ``quick``.

    Args:
        path: A YAML file like ``configs/demo.yaml``; ``None`` uses the built-in values.
        quick: Apply the quick overrides.

    Raises:
        ConfigError: On a missing or malformed file or an unknown setting (named).
    """
    if path is None:
        return DemoSettings.quick() if quick else DemoSettings()
    from qamdt.training.mdt_config import read_yaml

    values = read_yaml(path)
    overrides = values.pop(QUICK_SECTION, None) or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{path}: '{QUICK_SECTION}' must be a mapping of settings")
    check_known_keys(overrides, DemoSettings, f"{path}: {QUICK_SECTION}", noun="setting")
    if quick:
        values.update(overrides)
    return DemoSettings.from_dict(values, where=str(path))

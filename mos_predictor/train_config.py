"""The settings of a MOS training run (:class:`MosTrainConfig`) and their YAML loader."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mos_predictor.config import MosModelConfig
from mos_predictor.grouped import check_real_settings
from qamdt.config import ConfigBase
from qamdt.errors import ConfigError
from qamdt.training.precision import check_mixed_precision

REGRESSION_LOSSES = ("mse", "l1")


@dataclasses.dataclass(frozen=True)
class MosTrainConfig(ConfigBase):
    """Everything that determines a MOS training run (model settings under ``model``).

    Attributes:
        data: Rated clips: "corpus:MANIFEST", "musiceval:ROOT" or "csv:FILE".
        model: ``MosModelConfig`` fields.
        train_split: Split trained on.
        valid_split: Split that selects the best epoch.
        valid_data: Another source for validation (default: ``data``).
        exclude_degradations: Corpus degradation kinds left out of training and validation
            (a hold-out experiment).
        epochs: Passes over the training clips.
        batch_size: Clips per step.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up before the cosine decay.
        grad_clip: Gradient-norm clip.
        regression_loss: The score's regression term, on corpus clips and real versions:
            "mse" (squared error: a score learns the mean quality of the clips that sound
            alike) or "l1" (absolute error: their median).
        ta_weight: Weight of the text-alignment loss (text-aware models with TA targets).
        max_minutes: Stop after this much training time (None: no limit).
        patience: Stop after this many epochs without a better validation SRCC (None:
            run every epoch). The learning-rate schedule still spans ``epochs``, so a
            run that stops early keeps the weights a full run would have had so far.
        system_rule: How system ids are derived for system-level metrics.
        real_sources: Real-music sources trained on beside ``data`` (Debian packages or
            folders, see ``mos_predictor.real_music``); empty for none.
        holdout_sources: Real-music sources kept out of training for ``qamdt mos eval
            --protocol`` (recorded with the model).
        holdout_families: Degradation kinds (``qamdt.degradations.KINDS``) kept out of
            training for the protocol; training draws from all the others.
        real_excerpts_per_file: Excerpts (of the model's window length) per real file.
        real_files_per_source: Use at most this many files of each real source (None:
            all; small runs use a few).
        real_min_kbps_per_channel: Leave out real files coded below this bitrate per
            channel (size over duration): low-bitrate encodes are not clean recordings.
            Recorded with the model, so ``qamdt mos eval --protocol`` takes the same
            held-out files as clean. None: every file.
        real_versions: Versions per excerpt: the clean one and ``real_versions - 1``
            degraded ones.
        real_valid_every: One real file in this many goes to validation (by name hash).
        real_refresh_epochs: Draw fresh degraded versions of the training excerpts every
            this many epochs (the clean version and the validation pool stay; each draw
            depends only on the seed and the epoch, so a resumed run draws the same);
            0: one set of versions for the whole run.
        real_fresh_positions: Each fresh draw of versions (``real_refresh_epochs``) also
            takes its training excerpts at fresh seeded positions in the same slots of
            the same files (False: the same excerpts throughout).
        groups_per_batch: Real excerpts per training step, each as a group of versions.
        real_clean_share: Share of the groups that hold the clean recording beside degraded
            versions (the others hold degraded versions only).
        real_mix_share: Share of the training excerpts (per draw of versions) mixed at
            equal loudness with another training excerpt before degrading: new music at
            the same reference quality (0: off).
        real_speed_range: Training excerpts are played at a seeded speed within ``[1 - r,
            1 + r]`` (tempo and pitch together) before degrading (0: off).
        real_tilt_range: Training excerpts are tilted around 1 kHz by a seeded slope
            within ``[-r, r]`` dB per octave before degrading, all their versions alike:
            a mastering choice, the same reference quality (0: off).
        group_size: Versions per group.
        rank_weight: Weight of the pairwise ranking term within groups (0: regression
            only).
        cross_rank_weight: Weight of the pairwise ranking term across excerpts: pairs of
            the step's clips from different excerpts (corpus clips and real versions)
            whose reference qualities differ by more than ``cross_rank_gap`` (0: off).
            Like the term within groups it orders scores without pulling their level,
            so ``rank_only_kinds`` take part.
        cross_rank_gap: Smallest difference of reference quality ranked across excerpts.
        centred_weight: Weight of the squared error of scores and targets measured from
            their group's mean (:func:`~mos_predictor.grouped.centred_difference_loss`;
            0: off).
        rank_only_kinds: Training kinds whose versions train the ranking term only: a
            version whose chain holds one is left out of the regression term, so damage
            that a no-reference model cannot tell from a production choice (reverb,
            compression) orders an excerpt's versions without pulling down the score of
            clean music that sounds like it (empty: every version in both terms).
        kind_weight: Weight of an auxiliary term on the real versions: the model's kind
            head (``kind_outputs``) learns the severity of each training kind in the
            version (binary cross-entropy with the severities as targets; 0: off).
        gain_augment_db: Level augmentation: every training window (corpus and real
            versions) is scaled by its own gain, uniform in dB within +-this, after the
            usual peak normalisation (:func:`~mos_predictor.dataset.random_gain`; 0: off).
        real_workers: Processes that make the degraded versions.
        ema_decay: Validate and keep an exponential moving average of the weights, its
            decay ramped up to at most this as ``1 - (1 + step) ** -0.75`` (diffusers'
            ``EMAModel`` warm-up, as the MDT trainer's); None: the raw weights.
        seed: Seed of initialisation, shuffling and crops.
        num_workers: DataLoader workers.
        mixed_precision: "no", "bf16" (autocast in bfloat16; the log-mel front end stays
            float32), "fp16" (Accelerate's, with loss scaling), or "auto": bfloat16 where
            the hardware computes it natively (``qamdt.training.precision``).
    """

    data: str
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_split: str = "train"
    valid_split: str = "valid"
    valid_data: str | None = None
    exclude_degradations: tuple[str, ...] = ()
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    regression_loss: str = "mse"
    ta_weight: float = 1.0
    max_minutes: float | None = None
    patience: int | None = None
    system_rule: str = "field"
    real_sources: tuple[str, ...] = ()
    holdout_sources: tuple[str, ...] = ()
    holdout_families: tuple[str, ...] = ()
    real_excerpts_per_file: int = 4
    real_files_per_source: int | None = None
    real_min_kbps_per_channel: float | None = None
    real_versions: int = 6
    real_valid_every: int = 8
    real_refresh_epochs: int = 0
    real_fresh_positions: bool = False
    groups_per_batch: int = 2
    real_clean_share: float = 0.5
    real_mix_share: float = 0.0
    real_speed_range: float = 0.0
    real_tilt_range: float = 0.0
    group_size: int = 4
    rank_weight: float = 1.0
    cross_rank_weight: float = 0.0
    cross_rank_gap: float = 1.0
    centred_weight: float = 0.0
    rank_only_kinds: tuple[str, ...] = ()
    kind_weight: float = 0.0
    gain_augment_db: float = 0.0
    real_workers: int = 2
    ema_decay: float | None = None
    seed: int = 0
    num_workers: int = 0
    mixed_precision: str = "no"

    config_where = "mos train config"

    @classmethod
    def prepare(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """Names the one required key with an example."""
        if "data" not in values:
            raise ConfigError(f"{where}: 'data' is required (e.g. corpus:DIR/manifest.jsonl)")
        return values

    def __post_init__(self):
        MosModelConfig.from_dict(self.model, "model")
        check_mixed_precision(self.mixed_precision)
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ConfigError("epochs and batch_size must be > 0")
        if not 0 <= self.gain_augment_db <= 40:
            raise ConfigError(f"gain_augment_db must be in [0, 40], got {self.gain_augment_db}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be within (0, 1) (or null), got {self.ema_decay}")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise ConfigError(
                f"regression_loss must be one of {list(REGRESSION_LOSSES)}, "
                f"got {self.regression_loss!r}"
            )
        if self.patience is not None and self.patience <= 0:
            raise ConfigError(f"patience must be > 0 (or null), got {self.patience}")
        check_real_settings(self)

    def training_kinds(self) -> tuple[str, ...]:
        """Degradation kinds drawn for the real-music versions (all but the held-out)."""
        from qamdt.degradations import KINDS

        return tuple(k for k in KINDS if k not in self.holdout_families)


def load_train_config(path: str | os.PathLike | None, **overrides: Any) -> MosTrainConfig:
    """Reads a YAML training config; keyword overrides that are not None replace values."""
    return MosTrainConfig.from_yaml(path, **overrides)

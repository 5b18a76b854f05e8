"""Settings of a VAE training run (``configs/vae/*.yaml``): :class:`VaeTrainConfig`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from qamdt.audio_spec import get_audio_spec
from qamdt.config import ConfigBase
from qamdt.errors import ConfigError
from qamdt.models.vae import autoencoder_kwargs
from qamdt.training.precision import BFLOAT16_PRECISIONS, check_mixed_precision

# The embedded VAE: latent_channels 8 and 3 blocks (down-sampling by 4) as AudioLDM2's, so
# a mel of 864 x 80 becomes 8 x 216 x 20, but 1/8 of its width, one layer per block instead
# of two and no attention in the mid block (0.65 M parameters instead of about 55 M). The
# narrow network reconstructs less finely than AudioLDM2's would with long training, but
# it trains in about two minutes on two CPU cores; mid-block attention would add about 7%
# to each step, which buys more in steps.
DEFAULT_MODEL: dict[str, Any] = {
    "latent_channels": 8,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
}


@dataclasses.dataclass(frozen=True)
class VaeTrainConfig(ConfigBase):
    """Everything that determines a VAE training run.

    Attributes:
        manifest: The clip manifest (JSONL); given here or on the command line.
        audio: Audio preset whose mel settings the VAE learns ("embedded" or "paper").
        model: ``AutoencoderKL`` arguments (see :func:`~qamdt.models.vae.autoencoder_kwargs`).
        train_split: Split trained on (and used to measure the scaling factor).
        valid_split: Split the reconstruction error is reported on ("test" when empty).
        segment_frames: Length of the random time crops trained on (a multiple of the
            down-sampling factor, at most the clip length).
        steps: Optimizer steps.
        epochs: When set, replaces ``steps`` by ``ceil(epochs * clips / global batch)``.
        batch_size: Crops per step and process.
        learning_rate: Peak AdamW learning rate.
        adam_betas: AdamW betas; LDM trains its autoencoders with (0.5, 0.9).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up before the cosine decay to zero.
        grad_clip: Gradient-norm clip (0: none).
        kl_weight: Weight of the KL term. The KL is summed over latent elements and divided
            by the number of mel values, so the weight means what it does in LDM, whose
            losses are sums per example.
        spectral_weight: Weight of the L1 between the time and frequency differences of
            the reconstruction and of the mel (0: off).
        sample_posterior: Decode posterior samples in training (the mean when False).
        init_from_data: Start the network as if its input and output were standardised
            with the training mels' mean and std (the first convolution's weights are
            divided by the std and its bias shifted, the last one's weights multiplied by
            the std and its bias shifted by the mean). Log-mels sit around -4 with a std
            of about 2.4, far from what a fresh network expects; this saves many steps.
        initial_logvar: Initial bias of the posterior log-variance channels (None: keep
            the default 0). A fresh posterior with unit variance buries the latents in
            noise; a small one lets reconstruction start at once, and the KL term still
            pulls the variance up.
        scale_clips: Training clips (evenly spread) whose latents set the scaling factor
            (None: all).
        checkpoint_every: Save the Accelerate state every this many steps (and at the end).
        log_every: Write a line to ``train_log.jsonl`` every this many steps.
        eval_batch_size: Whole clips per forward pass when measuring and evaluating.
        max_minutes: Stop training once this much training time has passed, counted
            across resumed sessions (None: no limit).
        seed: Seed of the initialisation, the clip order, the crops and the noise.
        mixed_precision: "bf16" (autocast in bfloat16), "no", or "auto": bfloat16 where
            the hardware computes it natively (a GPU that supports it, a CPU with AMX or
            AVX512-BF16), float32 elsewhere. The loss, the optimizer, the scaling-factor
            measurement and the evaluation stay in float32.
    """

    manifest: str | None = None
    audio: str = "embedded"
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_MODEL))
    train_split: str = "train"
    valid_split: str = "valid"
    segment_frames: int = 128
    steps: int = 480
    epochs: float | None = None
    batch_size: int = 16
    learning_rate: float = 0.001
    adam_betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    kl_weight: float = 1.0e-6
    spectral_weight: float = 2.0
    sample_posterior: bool = True
    init_from_data: bool = True
    initial_logvar: float | None = -6.0
    scale_clips: int | None = 256
    checkpoint_every: int = 60
    log_every: int = 10
    eval_batch_size: int = 8
    max_minutes: float | None = None
    seed: int = 0
    mixed_precision: str = "auto"

    config_where = "vae train config"

    def __post_init__(self):
        spec = get_audio_spec(self.audio)
        model = autoencoder_kwargs(self.model, "model")
        factor = 2 ** (len(model.get("block_out_channels", (64,))) - 1)
        positive = ("steps", "batch_size", "checkpoint_every", "log_every", "eval_batch_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0 or null, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate must be > 0")
        if min(self.kl_weight, self.spectral_weight, self.grad_clip, self.warmup_steps) < 0:
            raise ConfigError("kl_weight, spectral_weight, grad_clip, warmup_steps must be >= 0")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError("adam_betas must be two numbers in [0, 1)")
        if self.scale_clips is not None and self.scale_clips <= 0:
            raise ConfigError("scale_clips must be > 0 or null")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError("max_minutes must be > 0 or null")
        if not 0 < self.segment_frames <= spec.clip_frames or self.segment_frames % factor:
            raise ConfigError(
                f"segment_frames={self.segment_frames} must be a multiple of the "
                f"down-sampling factor {factor} and at most the clip's {spec.clip_frames} frames"
            )
        if spec.clip_frames % factor or spec.n_mels % factor:
            raise ConfigError(
                f"the '{spec.name}' clip ({spec.clip_frames} x {spec.n_mels}) does not "
                f"divide by the down-sampling factor {factor}"
            )
        check_mixed_precision(self.mixed_precision, BFLOAT16_PRECISIONS)


def load_vae_config(path: str | os.PathLike | None, **overrides: Any) -> VaeTrainConfig:
    """Reads a YAML training config; keyword overrides that are not None replace values.

    Raises:
        ConfigError: On a file that is not a mapping, an unknown key or a bad value.
    """
    return VaeTrainConfig.from_yaml(path, **overrides)

"""Training the mel VAE with Accelerate.

``train_vae`` loads the train-split clips of a manifest, computes their log-mels once and
keeps them in memory, then trains a :class:`~qamdt.models.vae.LatentVAE` on random time
crops (the convolutional VAE is translation-equivariant, so crops teach it whole clips).
The loss is the L1 log-mel reconstruction error, plus ``kl_weight`` times the KL term and
``spectral_weight`` times an L1 on the error's time and frequency differences, which keeps
onsets and harmonics sharp where plain L1 blurs them (and, in short runs, also lowers the
plain L1 faster).

Every random draw of step ``s`` (which clips, where the crops start, the posterior noise)
comes from a generator seeded with ``(seed, s)``, so a run killed and resumed from its
last checkpoint takes exactly the steps an uninterrupted run takes. The Accelerate state
goes to ``OUT/checkpoint`` every ``checkpoint_every`` steps through
:class:`~qamdt.checkpoint_folders.CheckpointFolders` (a new sealed folder renamed into place,
the previous one kept), so a kill during the save loses nothing.

After training the latent scaling factor is measured as ``1 / std`` of the posterior-mean
latents of the training clips and stored in the model config; the model goes to
``OUT/model`` and the validation reconstruction error to ``OUT/metrics.json``.

The embedded defaults were chosen by measurement on 809 training clips of the embedded
corpus with two CPU cores (bfloat16 autocast on AMX): 480 steps of 16 crops of 128 frames
take about 135 s and reach a validation log-mel L1 of about 0.27 (log-mels span about
-11.5 to 2). Within the same time a twice wider network ([32, 64, 64], 300 steps) reached
0.38, so the budget goes to steps rather than width. Without native bfloat16 a step costs
about twice as much and ``max_minutes`` ends the run early.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamdt.audio_io import crop_or_pad, resample
from qamdt.audio_spec import AudioSpec, get_audio_spec
from qamdt.checkpoint_folders import CheckpointFolders, replace_folder
from qamdt.errors import ConfigError, QamdtError, check_known_keys
from qamdt.json_files import write_text_atomic
from qamdt.manifest import read_manifest
from qamdt.manifest.stages import load_clip_audio
from qamdt.mel import MelFrontEnd
from qamdt.models.vae import LatentVAE, autoencoder_kwargs

STATE_DIR = "checkpoint"
PROGRESS_NAME = "progress.json"
MODEL_DIR = "model"
LOG_NAME = "train_log.jsonl"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "train_config.json"
PRECISIONS = ("auto", "no", "bf16")

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
class VaeTrainConfig:
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
    max_minutes: float | None = 4.0
    seed: int = 0
    mixed_precision: str = "auto"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "vae train config") -> VaeTrainConfig:
        """Builds a config from a mapping, naming unknown keys.

        Raises:
            ConfigError: On an unknown key or a bad value.
        """
        check_known_keys(values, cls, where)
        values = dict(values)
        if "model" in values:
            values["model"] = dict(values["model"] or {})
        if "adam_betas" in values:
            values["adam_betas"] = tuple(values["adam_betas"])
        config = cls(**values)
        config.check(where)
        return config

    def check(self, where: str = "vae train config") -> None:
        """Validates the values.

        Raises:
            ConfigError: Naming the first bad field.
        """
        spec = get_audio_spec(self.audio)
        model = autoencoder_kwargs(self.model, f"{where}: model")
        factor = 2 ** (len(model.get("block_out_channels", (64,))) - 1)
        positive = ("steps", "batch_size", "checkpoint_every", "log_every", "eval_batch_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}: {name} must be > 0, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"{where}: epochs must be > 0 or null, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ConfigError(f"{where}: learning_rate must be > 0")
        if min(self.kl_weight, self.spectral_weight, self.grad_clip, self.warmup_steps) < 0:
            raise ConfigError(
                f"{where}: kl_weight, spectral_weight, grad_clip, warmup_steps must be >= 0"
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"{where}: adam_betas must be two numbers in [0, 1)")
        if self.scale_clips is not None and self.scale_clips <= 0:
            raise ConfigError(f"{where}: scale_clips must be > 0 or null")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"{where}: max_minutes must be > 0 or null")
        if not 0 < self.segment_frames <= spec.clip_frames or self.segment_frames % factor:
            raise ConfigError(
                f"{where}: segment_frames={self.segment_frames} must be a multiple of the "
                f"down-sampling factor {factor} and at most the clip's {spec.clip_frames} frames"
            )
        if spec.clip_frames % factor or spec.n_mels % factor:
            raise ConfigError(
                f"{where}: the '{spec.name}' clip ({spec.clip_frames} x {spec.n_mels}) does not "
                f"divide by the down-sampling factor {factor}"
            )
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(
                f"{where}: mixed_precision must be one of {list(PRECISIONS)}, "
                f"got {self.mixed_precision!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON form, saved beside the run."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_vae_config(path: str | os.PathLike | None, **overrides: Any) -> VaeTrainConfig:
    """Reads a YAML training config; keyword overrides that are not None replace values.

    Raises:
        ConfigError: On a file that is not a mapping, an unknown key or a bad value.
    """
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return VaeTrainConfig.from_dict(values, where=str(path or "vae train config"))


@dataclasses.dataclass
class MelSet:
    """Log-mels of whole clips, held in memory.

    Attributes:
        mels: ``[N, clip_frames, n_mels]`` float32.
        ids: Clip ids, in the same order.
        failures: ``{"id", "error"}`` for each clip that could not be loaded.
        skipped: Rows left out because they carry errors from earlier stages.
    """

    mels: torch.Tensor
    ids: list[str]
    failures: list[dict[str, str]]
    skipped: int


def load_mels(
    manifest: str | os.PathLike, split: str, spec: AudioSpec, progress: bool = False
) -> MelSet:
    """Computes the log-mel of every clip of a split, cut or padded to the preset's length.

    Rows with errors recorded by earlier stages are skipped; a clip that fails to load is
    recorded in ``failures`` and left out.

    Args:
        manifest: The JSONL manifest.
        split: Split to load.
        spec: Audio preset: sample rate, mel settings and clip length.
        progress: Show a progress bar.
    """
    from tqdm import tqdm

    from qamdt.errors import AudioError

    records = [r for r in read_manifest(manifest) if r.split == split]
    usable = [r for r in records if not r.errors]
    front_end = MelFrontEnd(spec)
    root = Path(manifest).parent
    mels, ids, failures = [], [], []
    for record in tqdm(usable, desc=f"mels ({split})", leave=False, disable=not progress):
        try:
            wave, rate = load_clip_audio(record, root)
            wave, _ = crop_or_pad(resample(wave, rate, spec.sample_rate), spec.clip_samples)
            mels.append(torch.from_numpy(front_end.mel_numpy(wave)).T.contiguous())
            ids.append(record.id)
        except (AudioError, ValueError, OSError) as error:
            failures.append({"id": record.id, "error": str(error)})
    stacked = torch.stack(mels) if mels else torch.empty(0, spec.clip_frames, spec.n_mels)
    return MelSet(stacked, ids, failures, len(records) - len(usable))


def vae_loss(
    output, mel: torch.Tensor, kl_weight: float, spectral_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of one batch.

    Args:
        output: A :class:`~qamdt.models.vae.VaeForward`.
        mel: The target ``[B, T, F]``.
        kl_weight: Weight of the KL term (see :class:`VaeTrainConfig`).
        spectral_weight: Weight of the time/frequency-difference L1.

    Returns:
        The loss and its parts as floats (``loss``, ``l1``, ``kl``, ``spectral``).
    """
    recon = output.reconstruction.float()
    mel = mel.float()
    l1 = (recon - mel).abs().mean()
    mean, logvar = output.mean.float(), output.logvar.float()
    kl_sum = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
    kl = kl_sum.mean() / mel[0].numel()
    spectral = recon.new_zeros(())
    if spectral_weight:
        error = recon - mel
        spectral = (error.diff(dim=1).abs().mean() + error.diff(dim=2).abs().mean()) / 2
    loss = l1 + kl_weight * kl + spectral_weight * spectral
    parts = {"loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "spectral": spectral.item()}
    return loss, parts


class CropSampler:
    """The clips and crop starts of every step, a pure function of ``(seed, step)``.

    Clips are visited in a fresh permutation each pass (a pass being one crop per clip);
    crop starts are uniform. Each process takes its slice of the global batch.

    Args:
        num_clips: Clips to draw from.
        clip_frames: Frames per clip.
        segment_frames: Frames per crop.
        batch_size: Crops per process and step.
        seed: Run seed.
        rank: This process's index.
        world: Number of processes.
    """

    def __init__(self, num_clips, clip_frames, segment_frames, batch_size, seed, rank, world):
        self.num_clips = num_clips
        self.max_start = clip_frames - segment_frames
        self.segment_frames = segment_frames
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self._orders: dict[int, torch.Tensor] = {}

    def generator(self, step: int, stream: int = 0) -> torch.Generator:
        """A CPU generator for ``step``; ``stream`` separates independent draws."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 1009 + stream)

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            order = torch.randperm(self.num_clips, generator=self.generator(epoch, stream=1))
            self._orders = {epoch: order}
        return self._orders[epoch]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip indices and crop starts of this process's share of ``step``."""
        size = self.batch_size * self.world
        first = step * size + self.rank * self.batch_size
        positions = range(first, first + self.batch_size)
        clips = torch.stack(
            [self._order(p // self.num_clips)[p % self.num_clips] for p in positions]
        )
        starts = torch.randint(0, self.max_start + 1, (size,), generator=self.generator(step))
        return clips, starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def noise_generator(self, step: int) -> torch.Generator:
        """Generator of this process's posterior noise at ``step``."""
        return self.generator(step, stream=2 + self.rank)


def crop_batch(mels: torch.Tensor, clips: torch.Tensor, starts: torch.Tensor, length: int):
    """``[B, length, F]`` crops of ``mels[clips]`` starting at ``starts``."""
    return torch.stack(
        [mels[c, s : s + length] for c, s in zip(clips.tolist(), starts.tolist(), strict=True)]
    )


@torch.no_grad()
def latent_statistics(vae: LatentVAE, mels: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``[count, sum, sum of squares]`` of the unscaled posterior-mean latents of whole clips.

    Float64 sums, which several processes can add up before taking the mean and std.
    """
    vae.eval()
    total = torch.zeros(3, dtype=torch.float64)
    for part in mels.split(batch_size):
        latents = vae.posterior(part).mean.double().cpu()
        count = torch.tensor(latents.numel(), dtype=torch.float64)
        total += torch.stack([count, latents.sum(), latents.square().sum()])
    return total


@torch.no_grad()
def reconstruction_error(vae: LatentVAE, mels: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``[sum of |decode(encode(mel)) - mel|, count]`` over whole clips (posterior mean)."""
    vae.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for part in mels.split(batch_size):
        recon = vae.decode(vae.encode(part)).float().cpu()
        error = (recon - part).abs().double().sum()
        total += torch.stack([error, torch.tensor(part.numel(), dtype=torch.float64)])
    return total


def use_bfloat16(mixed_precision: str, device: torch.device) -> bool:
    """Whether training autocasts to bfloat16 on ``device`` (see ``mixed_precision``)."""
    if mixed_precision != "auto":
        return mixed_precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


@torch.no_grad()
def prepare_for_training(vae: LatentVAE, mels: torch.Tensor, config: VaeTrainConfig) -> None:
    """Applies ``init_from_data`` and ``initial_logvar`` to a fresh VAE (see the config)."""
    autoencoder = vae.autoencoder
    if config.init_from_data:
        mean, std = mels.mean().item(), mels.std().item()
        first, last = autoencoder.encoder.conv_in, autoencoder.decoder.conv_out
        first.bias -= (mean / std) * first.weight.sum(dim=(1, 2, 3))
        first.weight /= std
        last.weight *= std
        last.bias.mul_(std).add_(mean)
    if config.initial_logvar is not None:
        moments = autoencoder.quant_conv
        if moments is None:  # use_quant_conv=False: the encoder's last layer gives them
            moments = autoencoder.encoder.conv_out
        moments.bias[vae.latent_channels :] = config.initial_logvar


def _load_splits(config: VaeTrainConfig, spec: AudioSpec, show: bool):
    """Training and validation mels, falling back to the test split for validation."""
    train = load_mels(config.manifest, config.train_split, spec, progress=show)
    if not train.ids:
        raise QamdtError(
            f"{config.manifest}: no usable clips in split '{config.train_split}' "
            f"({len(train.failures)} failed, {train.skipped} skipped)"
        )
    valid_split = config.valid_split
    valid = load_mels(config.manifest, valid_split, spec, progress=show)
    if not valid.ids and valid_split != "test":
        valid_split = "test"
        valid = load_mels(config.manifest, valid_split, spec, progress=show)
    return train, valid, valid_split


def _latent_mean_std(vae, mels, config, accelerator) -> tuple[float, float]:
    """Mean and (unbiased) std of the posterior-mean latents, each process taking a share."""
    rank, world = accelerator.process_index, accelerator.num_processes
    sums = latent_statistics(vae, mels[rank::world], config.eval_batch_size)
    count, total, total_sq = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
    mean = total / count
    return float(mean), float(torch.sqrt((total_sq / count - mean.square()) * count / (count - 1)))


def _reconstruction_l1(vae, mels, config, accelerator) -> float:
    """Mean absolute log-mel error of whole clips, each process taking a share."""
    rank, world = accelerator.process_index, accelerator.num_processes
    error = reconstruction_error(vae, mels[rank::world], config.eval_batch_size)
    error_sum, count = accelerator.reduce(error.to(accelerator.device), "sum").cpu()
    return float(error_sum / count)


def _mean_over_processes(parts: list[dict[str, float]], accelerator) -> dict[str, float]:
    """Loss parts averaged over the logged steps and over all processes."""
    keys = sorted(parts[0])
    means = torch.tensor([np.mean([p[k] for p in parts]) for k in keys], dtype=torch.float64)
    if accelerator.num_processes > 1:
        means = accelerator.reduce(means.to(accelerator.device), "mean").cpu()
    return {k: float(v) for k, v in zip(keys, means, strict=True)}


def _total_steps(config: VaeTrainConfig, num_clips: int, world: int) -> int:
    if config.epochs is None:
        return config.steps
    return max(1, math.ceil(config.epochs * num_clips / (config.batch_size * world)))


def _trim_log(path: Path, next_step: int) -> None:
    """Drops log lines past the checkpoint a resumed run starts from."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= next_step]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def train_vae(
    config: VaeTrainConfig, out_dir: str | os.PathLike, progress: bool = True
) -> dict[str, Any]:
    """Trains the mel VAE; resumes from ``OUT/checkpoint`` when present.

    Args:
        config: Training settings (``config.manifest`` must be set).
        out_dir: Run folder: ``model/`` (the final VAE, scaling factor in its config),
            ``checkpoint/`` (Accelerate state and ``progress.json``), ``train_log.jsonl``,
            ``metrics.json`` and ``train_config.json``.
        progress: Show progress bars.

    Returns:
        The summary also written to ``metrics.json``: ``recon_l1_valid``, ``latent_std``,
        ``scaling_factor``, ``steps``, ``train_seconds``, ``failures`` and more.

    Raises:
        ConfigError: If no manifest is given.
        QamdtError: If the training split has no usable clip.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    if not config.manifest:
        raise ConfigError("vae train config: 'manifest' is required (or pass --manifest)")
    started = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # cpu=True lets processes started by torchrun on a machine without GPUs form a group.
    # Precision is applied here with torch.autocast rather than through Accelerate, whose
    # process-wide state refuses a second Accelerator with another precision (as when one
    # process trains the MOS model in float32 and then this VAE in bfloat16).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    bfloat16 = use_bfloat16(config.mixed_precision, accelerator.device)
    show = progress and accelerator.is_main_process
    spec = get_audio_spec(config.audio)
    train, valid, valid_split = _load_splits(config, spec, show)

    set_seed(config.seed)
    vae = LatentVAE.from_config(config.model)
    prepare_for_training(vae, train.mels, config)
    optimizer = torch.optim.AdamW(
        vae.parameters(),
        lr=config.learning_rate,
        betas=config.adam_betas,
        weight_decay=config.weight_decay,
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    total_steps = _total_steps(config, len(train.ids), world)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, min(config.warmup_steps, total_steps // 10), total_steps
    )
    model, optimizer = accelerator.prepare(vae, optimizer)
    # Registered rather than prepared: a prepared scheduler steps once per process.
    accelerator.register_for_checkpointing(scheduler)
    sampler = CropSampler(
        len(train.ids),
        spec.clip_frames,
        config.segment_frames,
        config.batch_size,
        config.seed,
        rank,
        world,
    )

    folders = CheckpointFolders(
        out,
        STATE_DIR,
        accelerator.is_main_process,
        accelerator.wait_for_everyone,
        accelerator.print,
    )

    def save_checkpoint(progress: dict[str, Any]) -> None:
        folders.save(lambda path: accelerator.save_state(str(path)), progress)

    saved = folders.recover() or {"next_step": 0, "train_seconds": 0.0, "pending": []}
    step, trained_before = saved["next_step"], saved["train_seconds"]
    # Losses of the steps since the last log line, so the log reads the same after a resume.
    pending: list[dict[str, float]] = saved["pending"]
    if step:
        accelerator.load_state(str(folders.current))
        accelerator.print(f"resuming at step {step}")
    if accelerator.is_main_process:
        _trim_log(out / LOG_NAME, step)
        write_text_atomic(out / CONFIG_NAME, json.dumps(config.to_dict(), indent=1))

    session_start = time.time()
    budget = None if config.max_minutes is None else config.max_minutes * 60.0

    def trained_seconds() -> float:
        return trained_before + time.time() - session_start

    def out_of_time() -> bool:
        late = budget is not None and trained_seconds() >= budget
        if world > 1:  # every process must stop at the same step
            flag = torch.tensor(float(late), device=accelerator.device)
            late = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        return late

    bar = tqdm(total=total_steps, initial=step, desc="train VAE", disable=not show)
    stopped_early = False
    model.train()
    while step < total_steps:
        if out_of_time():
            stopped_early = True
            break
        clips, starts = sampler.batch(step)
        batch = crop_batch(train.mels, clips, starts, config.segment_frames)
        batch = batch.to(accelerator.device)
        with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=bfloat16):
            output = model(batch, config.sample_posterior, sampler.noise_generator(step))
        loss, parts = vae_loss(output, batch, config.kl_weight, config.spectral_weight)
        accelerator.backward(loss)
        if config.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        pending.append(parts)
        bar.update(1)
        bar.set_postfix(l1=f"{parts['l1']:.3f}")
        if step % config.log_every == 0 or step == total_steps:
            record = _mean_over_processes(pending, accelerator)
            if accelerator.is_main_process:
                record["lr"] = scheduler.get_last_lr()[0]
                record["seconds"] = round(trained_seconds(), 2)
                with open(out / LOG_NAME, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"step": step, **record}) + "\n")
            pending = []
        if step % config.checkpoint_every == 0 or step == total_steps:
            save_checkpoint(
                {"next_step": step, "train_seconds": trained_seconds(), "pending": pending}
            )
    bar.close()
    if stopped_early:
        save_checkpoint({"next_step": step, "train_seconds": trained_seconds(), "pending": pending})
        accelerator.print(f"stopped at step {step}/{total_steps} (max_minutes)")
    train_seconds = trained_seconds()

    vae = accelerator.unwrap_model(model)
    scale_mels = train.mels
    if config.scale_clips is not None and config.scale_clips < len(scale_mels):
        chosen = np.linspace(0, len(scale_mels) - 1, config.scale_clips).round().astype(int)
        scale_mels = scale_mels[torch.from_numpy(chosen)]
    latent_mean, latent_std = _latent_mean_std(vae, scale_mels, config, accelerator)
    vae.set_scaling_factor(1.0 / latent_std)
    recon_l1 = _reconstruction_l1(vae, valid.mels, config, accelerator) if valid.ids else None
    summary = {
        "recon_l1_valid": recon_l1,
        "valid_split": valid_split if valid.ids else None,
        "latent_std": latent_std,
        "latent_mean": latent_mean,
        "scaling_factor": vae.scaling_factor,
        "scale_clips": len(scale_mels),
        "latent_shape": list(vae.latent_shape(spec.clip_frames, spec.n_mels)),
        "steps": step,
        "total_steps": total_steps,
        "stopped_early": stopped_early,
        "mixed_precision": "bf16" if bfloat16 else "no",
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - started, 1),
        "train_clips": len(train.ids),
        "valid_clips": len(valid.ids),
        "skipped_rows": train.skipped + valid.skipped,
        "failures": train.failures + valid.failures,
        "model": str(out / MODEL_DIR),
    }
    if accelerator.is_main_process:
        replace_folder(out / MODEL_DIR, vae.save_pretrained)
        write_text_atomic(out / METRICS_NAME, json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return summary

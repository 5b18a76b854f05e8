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

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamdt.audio_spec import get_audio_spec
from qamdt.checkpoint_folders import CheckpointFolders, replace_folder
from qamdt.errors import ConfigError
from qamdt.json_files import write_text_atomic
from qamdt.models.vae import LatentVAE
from qamdt.training.precision import precision_used, use_bfloat16

# The settings and the data live in their own modules; their names are imported from here
# by the CLI, the demo and the tests (which patch crop_batch in this module).
from qamdt.training.vae_config import (  # noqa: F401
    DEFAULT_MODEL,
    VaeTrainConfig,
    load_vae_config,
)
from qamdt.training.vae_data import (  # noqa: F401
    CropSampler,
    MelSet,
    crop_batch,
    load_mels,
    load_splits,
)

STATE_DIR = "checkpoint"
PROGRESS_NAME = "progress.json"
MODEL_DIR = "model"
LOG_NAME = "train_log.jsonl"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "train_config.json"


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
    # Precision is torch.autocast's, not Accelerate's (qamdt.training.precision).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    bfloat16 = use_bfloat16(config.mixed_precision, accelerator.device)
    show = progress and accelerator.is_main_process
    spec = get_audio_spec(config.audio)
    train, valid, valid_split = load_splits(config, spec, show)

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
        "mixed_precision": precision_used(bfloat16),
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

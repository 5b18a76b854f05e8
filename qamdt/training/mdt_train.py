"""Training the quality-aware MDT with Accelerate (``accelerate launch`` runs it unchanged).

A run folder holds ``pipeline/`` (a complete generation pipeline folder whose
``transformer/`` holds the EMA weights, see :mod:`qamdt.generation.pipeline`),
``checkpoint/`` (the Accelerate state: model, optimiser, scheduler, EMA, RNG, and
``progress.json``; written atomically beside ``checkpoint.prev``, see
:mod:`qamdt.checkpoint_folders`), ``train_log.jsonl``, TensorBoard logs under ``logs/``,
``train_config.json``, ``samples/`` (periodic previews) and ``cache/`` (pre-computed
latents and text states, when enabled).

Every random draw of a step (posterior sample, noise, timesteps, masks, condition drops)
comes from a generator seeded by the run seed and the step's batch index, and the data
order of each epoch is a seeded permutation, so a resumed run continues the same loss
curve, and ends with the same weights bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamdt.checkpoint_folders import CheckpointFolders, recover_folder, replace_folder
from qamdt.diffusion.loss import diffusion_loss, training_target
from qamdt.diffusion.schedule import build_train_scheduler
from qamdt.errors import ConfigError
from qamdt.json_files import write_json
from qamdt.models.transformer import QualityMDTTransformer
from qamdt.training.ema import averaged_weights
from qamdt.training.mdt_batches import (
    BatchInputs,
    load_training_data,
    step_generator,
    training_loader,
)
from qamdt.training.mdt_config import MdtTrainConfig
from qamdt.training.precision import accelerate_precision, precision_used, use_bfloat16

STATE_DIR = "checkpoint"
PIPELINE_DIR = "pipeline"
MODEL_DIR = f"{PIPELINE_DIR}/transformer"
LOG_NAME = "train_log.jsonl"
PROGRESS_NAME = "progress.json"


def build_transformer(config: MdtTrainConfig, latent_channels: int, text_dim: int, latent_size):
    """The transformer of a run, its channel and text widths taken from the VAE and encoder.

    Raises:
        ConfigError: If the model config contradicts the VAE or the text encoder.
    """
    values = dict(config.model)
    for key, actual, source in (
        ("in_channels", latent_channels, "the VAE's latent channels"),
        ("text_dim", text_dim, "the text encoder's width"),
    ):
        if key in values and int(values[key]) != actual:
            raise ConfigError(f"model.{key} is {values[key]} but {source} is {actual}")
        values[key] = actual
    values.setdefault("sample_size", list(latent_size))
    if values.get("prediction_type", config.diffusion.prediction_type) != (
        config.diffusion.prediction_type
    ):
        raise ConfigError("model.prediction_type differs from diffusion.prediction_type")
    values["prediction_type"] = config.diffusion.prediction_type
    return QualityMDTTransformer(**values)


def compile_for_training(model: QualityMDTTransformer) -> None:
    """Compiles the transformer in place for training (``compile: true``).

    Parameter and state-dict names stay those of the plain model. Each batch changes the
    kept-token count (its mask ratio) and the caption length: both become dynamic sizes
    after the first recompile.
    """
    model.compile()


def fused_adamw(parameters, **options: Any) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel (one kernel per step for all tensors).

    On CUDA the fused step is the standard fast path; on the CPU it also beats the
    default multi-tensor step (benchmarks/README.md). Builds of PyTorch without a fused
    kernel for the parameters' device get the default implementation.
    """
    parameters = list(parameters)
    try:
        return torch.optim.AdamW(parameters, fused=True, **options)
    except RuntimeError:
        return torch.optim.AdamW(parameters, **options)


def _log(out: Path, record: dict[str, Any]) -> None:
    with open(out / LOG_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_log(out: Path, step: int) -> None:
    """Drops log lines written after the checkpoint a run resumes from."""
    path = out / LOG_NAME
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def export_model(model: QualityMDTTransformer, ema, path: Path) -> None:
    """Saves the EMA weights (or the raw ones without EMA) with ``save_pretrained``."""
    with averaged_weights(ema, model.parameters()):
        model.save_pretrained(path)


def train_mdt(
    config: MdtTrainConfig, out_dir: str | os.PathLike, progress: bool = True
) -> dict[str, Any]:
    """Trains (or resumes training) a QA-MDT transformer.

    Args:
        config: The run's settings.
        out_dir: Run folder (see the module docstring).
        progress: Show a progress bar.

    Returns:
        A summary: steps, final loss, throughput, where the model is.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm
    from transformers import get_constant_schedule_with_warmup

    from qamdt.generation.export import write_pipeline_parts
    from qamdt.models.text_encoder import TextEncoder
    from qamdt.models.vae import LatentVAE
    from qamdt.training.preview import sample_preview

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        mixed_precision=accelerate_precision(config.mixed_precision),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        cpu=not torch.cuda.is_available(),
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
    )
    set_seed(config.seed)
    device = accelerator.device
    bfloat16 = use_bfloat16(config.mixed_precision, device)
    vae = LatentVAE.from_pretrained(config.vae).to(device).eval().requires_grad_(False)
    text_encoder = TextEncoder.from_pretrained(config.text_encoder).to(device)
    dataset, collate, null_text, cached, latent_frames, latent_bands = load_training_data(
        config, out, vae, text_encoder, accelerator
    )
    batches = BatchInputs(config, vae, text_encoder, null_text, cached, latent_frames)
    model = build_transformer(
        config, vae.latent_channels, text_encoder.hidden_size, (latent_frames, latent_bands)
    )
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if config.compile:
        compile_for_training(model)
    scheduler = build_train_scheduler(config.diffusion)
    optimizer = fused_adamw(
        model.parameters(),
        lr=config.learning_rate,
        betas=tuple(config.adam_betas),
        weight_decay=config.weight_decay,
    )
    lr_schedule = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    loader = training_loader(dataset, collate, config.batch_size, config.num_workers, config.seed)
    sampler = loader.sampler
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # Not prepared: a prepared scheduler advances once per process on every step, which
    # would shorten the warm-up on several GPUs; warmup_steps counts optimiser steps.
    accelerator.register_for_checkpointing(lr_schedule)
    unwrapped: QualityMDTTransformer = accelerator.unwrap_model(model)
    ema = None
    if config.ema_decay is not None:
        ema = EMAModel(
            unwrapped.parameters(),
            decay=config.ema_decay,
            use_ema_warmup=config.ema_warmup,
            power=config.ema_power,
            model_cls=QualityMDTTransformer,
            model_config=unwrapped.config,
        )
        ema.to(device)
        accelerator.register_for_checkpointing(ema)

    folders = CheckpointFolders(
        out,
        STATE_DIR,
        accelerator.is_main_process,
        accelerator.wait_for_everyone,
        accelerator.print,
    )
    saved = folders.recover() or {"step": 0, "recent": []}
    step = int(saved["step"])
    # Losses since the last log line, so the log reads the same after a resume.
    recent: list[float] = list(saved.get("recent", []))
    if step:
        accelerator.load_state(str(folders.current))
        accelerator.print(f"resuming at step {step}")
    if accelerator.is_main_process:
        recover_folder(out / MODEL_DIR)
    if accelerator.is_main_process:
        _truncate_log(out, step)
        write_json(out / "train_config.json", config.to_dict())
        accelerator.init_trackers("qamdt")

    accumulation = config.gradient_accumulation_steps
    batches_per_epoch = len(loader)
    if batches_per_epoch < accumulation:
        raise ConfigError("fewer batches per epoch than gradient_accumulation_steps")
    started = time.time()
    stop_reason = "max_steps"
    samples_seen = 0
    bar = tqdm(
        total=config.max_steps,
        initial=step,
        desc="training",
        disable=not progress or not accelerator.is_main_process,
    )

    def export() -> None:
        if accelerator.is_main_process:
            replace_folder(out / MODEL_DIR, lambda path: export_model(unwrapped, ema, path))
            if not (out / PIPELINE_DIR / "pipeline.json").is_file():
                write_pipeline_parts(config, out / PIPELINE_DIR, vae, text_encoder)
        accelerator.wait_for_everyone()

    def checkpoint() -> None:
        export()
        folders.save(
            lambda path: accelerator.save_state(str(path)), {"step": step, "recent": recent}
        )

    last_checkpoint = step
    while step < config.max_steps and stop_reason == "max_steps":
        batch_index = step * accumulation
        epoch, skip = divmod(batch_index, batches_per_epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        # A prepared loader sets the sampler's and the dataset's epoch to its own count of
        # passes when iterated, which restarts at 0 in a resumed run: give it the epoch.
        for target in (sampler, dataset, loader, epoch_loader):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
        unwrapped.train()
        for batch in epoch_loader:
            generator = step_generator(config.seed, batch_index, accelerator.process_index)
            batch_index += 1
            if not cached and batch["mel"] is None:
                continue
            inputs = batches.inputs(batch, generator, device)
            noise = torch.randn(inputs["latents"].shape, generator=generator).to(device)
            timesteps = torch.randint(
                0, scheduler.config.num_train_timesteps, (noise.shape[0],), generator=generator
            ).to(device)
            noisy = scheduler.add_noise(inputs["latents"], noise, timesteps)
            target = training_target(scheduler, inputs["latents"], noise, timesteps)
            arguments = (
                noisy,
                timesteps,
                inputs["text_states"],
                inputs["text_mask"],
                inputs["quality_level"],
            )
            with accelerator.accumulate(model):
                mask_ratio = unwrapped.sample_mask_ratio(generator)
                with torch.autocast(device.type, torch.bfloat16, enabled=bfloat16):
                    prediction = model(*arguments, mask_ratio=mask_ratio, generator=generator)
                    unmasked = None
                    if config.diffusion.loss_mode == "two_pass":
                        unmasked = model(*arguments)
                loss = diffusion_loss(
                    prediction, target, timesteps, scheduler, config.diffusion.min_snr_gamma
                )
                if unmasked is not None:
                    loss = loss + diffusion_loss(
                        unmasked, target, timesteps, scheduler, config.diffusion.min_snr_gamma
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
            recent.append(float(loss.detach()))
            samples_seen += noise.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            if ema is not None:
                ema.step(unwrapped.parameters())
            bar.update(1)
            if step % config.log_every == 0 or step == config.max_steps:
                elapsed = time.time() - started
                # The mean over processes, so the curve does not depend on the rank.
                mean_loss = torch.tensor(float(np.mean(recent)), device=device)
                record = {
                    "step": step,
                    "loss": float(accelerator.reduce(mean_loss, reduction="mean")),
                    "lr": lr_schedule.get_last_lr()[0],
                    "seconds": round(elapsed, 2),
                    "samples_per_second": round(samples_seen / max(elapsed, 1e-9), 3),
                }
                recent.clear()
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                accelerator.log({"loss": record["loss"], "lr": record["lr"]}, step=step)
                if accelerator.is_main_process:
                    _log(out, record)
            if (
                config.sample_every
                and step % config.sample_every == 0
                and accelerator.is_main_process
            ):
                sample_preview(
                    config,
                    unwrapped,
                    ema,
                    vae,
                    text_encoder,
                    out,
                    step,
                    (latent_frames, latent_bands),
                )
                unwrapped.train()
            if step % config.checkpoint_every == 0:
                checkpoint()
                last_checkpoint = step
            if (
                config.max_minutes is not None
                and (time.time() - started) / 60 >= config.max_minutes
            ):
                stop_reason = "max_minutes"
            if step >= config.max_steps or stop_reason != "max_steps":
                break
    bar.close()
    if last_checkpoint != step:
        checkpoint()
    else:
        export()
    accelerator.end_training()
    elapsed = time.time() - started
    summary = {
        "steps": step,
        "stopped_by": stop_reason,
        "seconds": round(elapsed, 1),
        "samples_per_second": round(samples_seen / max(elapsed, 1e-9), 3),
        "parameters": sum(p.numel() for p in unwrapped.parameters()),
        "mixed_precision": precision_used(bfloat16, accelerator.mixed_precision),
        "clips": len(dataset),
        "model": str(out / MODEL_DIR),
        "pipeline": str(out / PIPELINE_DIR),
    }
    if accelerator.is_main_process:
        write_json(out / "train_summary.json", summary)
    return summary


def loss_curve(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The logged records of a run, in step order."""
    path = Path(out_dir) / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

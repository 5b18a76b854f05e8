"""Training and evaluation of MOS models with Accelerate (settings: ``train_config``).

``train_mos_model`` fits a model built from a ``MosModelConfig`` on rated clips (the
embedded corpus, MusicEval, or a CSV), keeps the checkpoint with the best validation
SRCC in ``OUT/model`` (safetensors + config), logs every epoch to ``OUT/train_log.jsonl``
and saves the Accelerate state each epoch so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mos_predictor.config import MosModelConfig
from mos_predictor.data import load_ratings, system_ids
from mos_predictor.dataset import RatedClipDataset, collate_rated, random_gain
from mos_predictor.grouped import (
    GroupBatches,
    build_real_pools,
    centred_difference_loss,
    pairwise_rank_loss,
    pool_metrics,
    refresh_train_pool,
    score_pool,
)
from mos_predictor.metrics import evaluate_predictions
from mos_predictor.models import build_mos_model
from mos_predictor.ratings import RatedClip

# load_train_config is imported from here by qamdt.cli.mos_commands and the demo.
from mos_predictor.train_config import MosTrainConfig, load_train_config  # noqa: F401
from qamdt.audio_io import load_audio
from qamdt.checkpoint_folders import CheckpointFolders, GeneratorState, replace_folder
from qamdt.errors import QamdtError
from qamdt.json_files import write_text_atomic
from qamdt.training.ema import averaged_weights
from qamdt.training.precision import accelerate_precision, precision_used, use_bfloat16

STATE_DIR = "checkpoint"
MODEL_DIR = "model"
LOG_NAME = "train_log.jsonl"
METRICS_NAME = "metrics.json"


def _load_clips(config: MosTrainConfig) -> tuple[list[RatedClip], list[RatedClip]]:
    # A held-out degradation kind is kept out of model selection too, not only training.
    options = {"exclude_degradations": config.exclude_degradations}
    options = options if config.exclude_degradations else {}
    train = load_ratings(config.data, split=config.train_split, **options)
    valid = load_ratings(config.valid_data or config.data, split=config.valid_split, **options)
    if not train:
        raise QamdtError(f"{config.data}: no clips in split '{config.train_split}'")
    if not valid:
        raise QamdtError(f"{config.valid_data or config.data}: no clips in split "
                         f"'{config.valid_split}'")  # fmt: skip
    return train, valid


def _out_of_patience(best: dict[str, Any], epochs_done: int, patience: int | None) -> bool:
    """Whether ``patience`` epochs have passed since the best one (or since the start)."""
    if patience is None:
        return False
    return epochs_done - (best["epoch"] or 0) >= patience


def predict_clips(
    model, clips: list[RatedClip], batch_size: int = 16, with_text: bool | None = None
) -> list[dict[str, float]]:
    """Scores whole clips (mean over the model's windows), as labelling does.

    Args:
        model: A ``MosModel``.
        clips: Clips to score.
        batch_size: Windows per forward pass.
        with_text: Pass captions (default: when the model is text-aware).

    Returns:
        One ``{"omq": ..., ["ta": ...]}`` per clip.
    """
    with_text = model.config.kind == "text-aware" if with_text is None else with_text
    results = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        waves, rates = [], []
        for clip in chunk:
            wave, rate = load_audio(
                clip.path, offset=clip.offset, duration=clip.duration, allow_silent=True
            )
            waves.append(wave)
            rates.append(rate)
        texts = [clip.caption or "" for clip in chunk] if with_text else None
        results.extend(model.predict(waves, rates, texts=texts, batch_size=batch_size))
    return results


def evaluate_model(
    model, clips: list[RatedClip], batch_size: int = 16, system_rule: str = "field"
) -> dict[str, Any]:
    """Utterance- and system-level MSE, LCC, SRCC and Kendall tau of a model on clips.

    Returns:
        ``{"omq": {...}, "ta": {...} (text-aware models with TA targets)}``.
    """
    scores = predict_clips(model, clips, batch_size)
    systems = system_ids(clips, system_rule) if system_rule != "none" else None
    if systems is not None and len(set(systems)) < 2:
        systems = None
    true = np.array([c.mos for c in clips], dtype=np.float64)
    pred = np.array([s["omq"] for s in scores], dtype=np.float64)
    result = {"omq": evaluate_predictions(pred, true, systems)}
    have_ta = [i for i, c in enumerate(clips) if c.ta is not None and "ta" in scores[i]]
    if have_ta:
        ta_true = np.array([clips[i].ta for i in have_ta], dtype=np.float64)
        ta_pred = np.array([scores[i]["ta"] for i in have_ta], dtype=np.float64)
        ta_systems = [systems[i] for i in have_ta] if systems else None
        result["ta"] = evaluate_predictions(ta_pred, ta_true, ta_systems)
    return result


def _fit_distillation(model, dataset: RatedClipDataset, config: MosTrainConfig) -> None:
    """Fits the DistilMOS k-means targets on (up to 256) training clips before training."""
    from mos_predictor.distill import fit_distillation_targets

    rng = np.random.default_rng(config.seed)
    chosen = rng.permutation(len(dataset))[:256]
    waves = [dataset.load(int(i)) for i in chosen]
    fit_distillation_targets(model, waves, batch_size=config.batch_size, seed=config.seed)


def _regression(kind: str, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The regression term ``regression_loss`` names (:class:`MosTrainConfig`)."""
    if kind == "l1":
        return torch.nn.functional.l1_loss(scores, targets)
    return torch.nn.functional.mse_loss(scores, targets)


def _loss(output, batch: dict[str, torch.Tensor], config: MosTrainConfig) -> torch.Tensor:
    loss = _regression(config.regression_loss, output.omq, batch["mos"])
    if output.ta is not None:
        mask = ~torch.isnan(batch["ta"])
        if mask.any():
            loss = loss + config.ta_weight * torch.nn.functional.mse_loss(
                output.ta[mask], batch["ta"][mask]
            )
    if output.aux_loss is not None:
        loss = loss + output.aux_loss
    return loss


def _mixed_loss(model, batch, real: dict[str, torch.Tensor], config: MosTrainConfig,
                text_aware: bool) -> torch.Tensor:  # fmt: skip
    """Regression on corpus clips and real versions together, plus ranking within groups.

    Versions marked ``regress`` False (``rank_only_kinds``) train the ranking terms only.
    """
    device = batch["wave"].device
    real_wave, real_mos = real["wave"].to(device), real["mos"].to(device)
    waves = torch.cat([batch["wave"], real_wave])
    texts = list(batch["caption"]) + [""] * real_wave.shape[0] if text_aware else None
    output = model(waves, texts)
    count = batch["wave"].shape[0]
    ta = None if output.ta is None else output.ta[:count]
    corpus_out = dataclasses.replace(output, omq=output.omq[:count], ta=ta)
    loss = _loss(corpus_out, batch, config)
    real_pred = output.omq[count:]
    regress = real["regress"].to(device)
    regressed = int(regress.sum())
    if regressed:
        real_loss = _regression(config.regression_loss, real_pred[regress], real_mos[regress])
        # Weighted by clips, as one regression over the whole batch.
        loss = (count * loss + regressed * real_loss) / (count + regressed)
    groups = real["group"].to(device)
    if config.rank_weight > 0:
        loss = loss + config.rank_weight * pairwise_rank_loss(real_pred, real_mos, groups)
    if config.cross_rank_weight > 0:
        # Every corpus clip is an excerpt of its own: ids below the real groups' (>= 0).
        ids = torch.cat([-1 - torch.arange(count, device=device), groups])
        targets = torch.cat([batch["mos"], real_mos])
        cross = pairwise_rank_loss(
            output.omq, targets, ids, min_gap=config.cross_rank_gap, across=True
        )
        loss = loss + config.cross_rank_weight * cross
    if config.centred_weight > 0:
        centred = centred_difference_loss(real_pred, real_mos, groups)
        loss = loss + config.centred_weight * centred
    if config.kind_weight > 0 and output.kinds is not None:
        kinds = torch.nn.functional.binary_cross_entropy_with_logits(
            output.kinds[count:].float(), real["kinds"].to(device)
        )
        loss = loss + config.kind_weight * kinds
    return loss


def _trim_log(path: Path, epochs: int) -> None:
    """Drops log lines of epochs after the checkpoint a run resumes from."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["epoch"] <= epochs]
        if len(kept) != len(lines):
            write_text_atomic(path, "".join(line + "\n" for line in kept))


def _save_model(model, config: MosTrainConfig, path: Path) -> None:
    """The model and its training settings in ``path``."""
    model.save_pretrained(path)
    # The protocol of `qamdt mos eval --protocol` reads the hold-outs from here.
    (path / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1))


def train_mos_model(
    config: MosTrainConfig, out_dir: str | os.PathLike, progress: bool = True
) -> dict[str, Any]:
    """Trains a MOS model; resumes from ``OUT/checkpoint`` when present.

    Args:
        config: Training settings.
        out_dir: Run folder: ``model/`` (best checkpoint), ``checkpoint/`` (Accelerate
            state), ``train_log.jsonl``, ``metrics.json``, ``train_config.json``.
        progress: Show a progress bar.

    Returns:
        The best validation metrics and where the model is.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # cpu=True lets processes started by torchrun on a machine without GPUs form a group.
    accelerator = Accelerator(
        mixed_precision=accelerate_precision(config.mixed_precision),
        cpu=not torch.cuda.is_available(),
    )
    bfloat16 = use_bfloat16(config.mixed_precision, accelerator.device)
    set_seed(config.seed)
    train_clips, valid_clips = _load_clips(config)

    targets = np.array([c.mos for c in train_clips], dtype=np.float64)
    real_train = real_valid = None
    if config.real_sources:
        base_model = MosModelConfig.from_dict(config.model or {})
        pool_started = time.time()
        real_skipped: list[str] = []
        real_train, real_valid = build_real_pools(config, base_model, progress, real_skipped)
        pool_seconds = round(time.time() - pool_started, 1)
        targets = np.concatenate([targets, real_train.targets.ravel()])
    model_config = MosModelConfig.from_dict(
        {
            **config.model,
            "score_offset": float(targets.mean()),
            "score_scale": float(max(targets.std(), 1e-3)),
            **(
                {"kind_outputs": len(config.training_kinds())}
                if config.kind_weight > 0 and config.real_sources
                else {}
            ),
        }
    )
    model = build_mos_model(model_config)
    dataset = RatedClipDataset(
        train_clips,
        model_config.sample_rate,
        model_config.window_seconds,
        train=True,
        seed=config.seed,
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(dataset) > config.batch_size,
        collate_fn=collate_rated,
        num_workers=config.num_workers,
        generator=shuffle,
    )
    if model_config.distill_layers:
        _fit_distillation(model, dataset, config)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total_steps = config.epochs * max(1, len(loader))
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, min(config.warmup_steps, total_steps // 10), total_steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    ema = None
    if config.ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(parameters, decay=config.ema_decay, use_ema_warmup=True, power=0.75)
        accelerator.register_for_checkpointing(ema)

    # The shuffle order of the next epoch comes from the generator's state: saved with
    # the rest, so a resumed run shuffles as an uninterrupted one.
    accelerator.register_for_checkpointing(GeneratorState(shuffle))
    folders = CheckpointFolders(
        out, STATE_DIR, accelerator.is_main_process, accelerator.wait_for_everyone
    )
    first_epoch, best = 0, {"srcc": -math.inf, "epoch": None}
    saved = folders.recover()
    if saved:
        accelerator.load_state(str(folders.current))
        first_epoch, best = saved["next_epoch"], saved["best"]
    if accelerator.is_main_process:
        _trim_log(out / LOG_NAME, first_epoch)
        if saved:
            accelerator.print(f"resuming at epoch {first_epoch + 1}")
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1))

    text_aware = model_config.kind == "text-aware"
    groups = None
    if real_train is not None:
        groups = GroupBatches.for_config(real_train, config)
    started = time.time()
    epochs_done, stopped_by = first_epoch, "epochs"
    for epoch in range(first_epoch, config.epochs):
        if _out_of_patience(best, epochs_done, config.patience):
            stopped_by = "patience"
            break
        dataset.set_epoch(epoch)
        loader.set_epoch(epoch)  # else a resumed run's loader restarts its count at 0
        accelerator.unwrap_model(model).train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not progress or not accelerator.is_main_process)  # fmt: skip
        if groups is not None:
            plan = functools.partial(groups.excerpts_for_epochs, batches=len(loader))
            fresh = refresh_train_pool(groups.pool, config, model_config, epoch, progress, plan)
            if fresh is not groups.pool:
                groups = GroupBatches.for_config(fresh, config)
            groups.set_epoch(epoch)
        # Seeded by the seed and the epoch alone, so a resumed run draws the same gains.
        gains = torch.Generator().manual_seed(config.seed * 100_003 + 17 * epoch + 5)
        shift = functools.partial(random_gain, max_db=config.gain_augment_db, generator=gains)
        for batch in bar:
            real = None if groups is None else groups.next()
            if config.gain_augment_db > 0:
                batch = {**batch, "wave": shift(batch["wave"])}
                if real is not None:
                    real = {**real, "wave": shift(real["wave"])}
            with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=bfloat16):
                if real is None:
                    output = model(batch["wave"], batch["caption"] if text_aware else None)
                    loss = _loss(output, batch, config)
                else:
                    loss = _mixed_loss(model, batch, real, config, text_aware)
            accelerator.backward(loss)
            if config.grad_clip:
                accelerator.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            if ema is not None:
                ema.step(parameters)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        # Validated and saved with the averaged weights; trained and checkpointed live.
        with averaged_weights(ema, parameters):
            unwrapped = accelerator.unwrap_model(model)
            unwrapped.eval()
            metrics = evaluate_model(unwrapped, valid_clips, config.batch_size, config.system_rule)
            srcc = metrics["omq"]["utterance"]["srcc"]
            record = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)) if losses else None,
                "valid": metrics,
                "seconds": round(time.time() - started, 1),
            }
            if real_valid is not None:
                # Model selection weighs the corpus and real music equally.
                real = pool_metrics(score_pool(unwrapped, real_valid, config.batch_size),
                                    real_valid.targets)  # fmt: skip
                record["valid_real"] = real
                metrics = {**metrics, "real": real}
                srcc = 0.5 * (srcc + real["srcc"])
            # Every process evaluates the whole validation set, so all agree on the best epoch.
            improved = bool(np.isfinite(srcc) and srcc > best["srcc"])
            if improved:
                best = {"srcc": float(srcc), "epoch": epoch + 1, "valid": metrics}
            if accelerator.is_main_process:
                with open(out / LOG_NAME, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                if improved:
                    replace_folder(
                        out / MODEL_DIR, functools.partial(_save_model, unwrapped, config)
                    )
                accelerator.print(
                    f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, valid score {srcc:.4f}, "
                    f"LCC {metrics['omq']['utterance']['lcc']:.4f}"
                )
        folders.save(
            lambda path: accelerator.save_state(str(path)), {"next_epoch": epoch + 1, "best": best}
        )
        epochs_done = epoch + 1
        elapsed_minutes = (time.time() - started) / 60.0
        if _out_of_patience(best, epochs_done, config.patience):
            accelerator.print(f"stopping after epoch {epochs_done}: no better validation "
                              f"SRCC since epoch {best['epoch']} (patience)")  # fmt: skip
            stopped_by = "patience"
            break
        if config.max_minutes is not None and elapsed_minutes >= config.max_minutes:
            accelerator.print(f"stopping after {elapsed_minutes:.1f} min (max_minutes)")
            stopped_by = "max_minutes"
            break
    summary = {
        "best_epoch": best["epoch"],
        "best_valid_srcc": best["srcc"],
        "epochs_run": epochs_done,
        "mixed_precision": precision_used(bfloat16, accelerator.mixed_precision),
        "stopped_by": stopped_by,
        "model": str(out / MODEL_DIR),
        "train_seconds": round(time.time() - started, 1),
        "train_clips": len(train_clips),
        "valid_clips": len(valid_clips),
    }
    if real_train is not None:
        summary["real_train_excerpts"] = len(real_train)
        summary["real_valid_excerpts"] = 0 if real_valid is None else len(real_valid)
        summary["real_versions"] = config.real_versions
        summary["real_pool_seconds"] = pool_seconds
        summary["real_failures"] = real_train.failures + (real_valid.failures if real_valid else [])
        summary["real_skipped"] = real_skipped
    if accelerator.is_main_process:
        (out / METRICS_NAME).write_text(json.dumps({**summary, "valid": best.get("valid")},
                                                   indent=1))  # fmt: skip
    return summary

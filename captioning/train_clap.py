"""Training of the embedded CLAP model on a corpus manifest (metrics: ``captioning.retrieval``).

:func:`train_embedded_clap` pairs each clip of the train split with its true caption
(``meta.true_caption``) and, as augmentation with probability ``tag_caption_prob``, with
the tag-list form of the truth (the values of ``meta.tags`` joined by commas). Each
step sees a random ``window_seconds`` crop of every clip, with one frequency band and one
time span masked (SpecAugment). It minimises the symmetric InfoNCE loss of CLIP with
AdamW and a cosine schedule. Clips with the same true caption (clips of one piece and
variant) are all positives of each other in a batch, so they are not pushed apart as
false negatives.

Speed on a CPU comes from work done once: every clip's log-mel is computed once and kept
in memory (training crops random windows from it; the front end has no weights), and the
frozen text encoder embeds each distinct caption once. The epoch with the best validation
retrieval (``select_metric``, text-to-audio recall@1 by default) is kept.

Output folder: the model (``config.json`` + ``model.safetensors``, so ``load_clap(out)``
loads it), ``train_log.jsonl`` (one line per epoch), ``metrics.json`` (best epoch,
validation and test retrieval, timings), and while training runs ``checkpoint.pt`` (the
last epoch, for ``resume=True``), removed at the end.

Determinism: the initial weights, each epoch's order, crops and caption forms and the
dropout masks derive from ``seed`` (and the epoch), so a run repeats exactly on the same
machine, thread count and library versions, and a resumed run continues as an
uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from captioning.clap_model import EmbeddedClapConfig
from captioning.embedded_clap import EmbeddedClapScorer
from captioning.retrieval import retrieval_metrics
from qamdt.audio_io import load_audio, normalize_waveform
from qamdt.checkpoints import CheckpointError, load_torch_checkpoint
from qamdt.errors import ConfigError, QamdtError
from qamdt.json_files import atomic_path, fsync_path
from qamdt.manifest import ClipRecord, read_manifest
from qamdt.training.precision import (
    BFLOAT16_PRECISIONS,
    check_mixed_precision,
    precision_used,
    use_bfloat16,
)

LOG_NAME = "train_log.jsonl"
METRICS_NAME = "metrics.json"
CHECKPOINT_NAME = "checkpoint.pt"
SELECT_METRICS = ("t2a_r1", "t2a_r5", "a2t_r1", "a2t_r5", "caption_t2a_r1", "caption_a2t_r1")
# Later tie-breakers of select_metric, in order.
_TIE_BREAKERS = ("t2a_r5", "caption_t2a_r1", "a2t_r1")
_TAG_ORDER = (
    "style",
    "form",
    "composer",
    "tradition",
    "ensemble",
    "instruments",
    "tempo",
    "bpm",
    "key",
    "meter",
)


# -------------------------------------------------------------------------------- data


def tag_caption(tags: Mapping[str, Any]) -> str:
    """The tag-list form of a clip's truth: ``meta.tags`` values joined by commas.

    Known fields come first in a fixed order (``instrument_families``, ``tempo_class``
    and ``mode`` are left out: they repeat other fields); lists are flattened and the
    tempo in BPM is written ``"66 BPM"``.

    Args:
        tags: The clip's ``meta.tags``.

    Returns:
        E.g. ``"renaissance, madrigal, Claudio Monteverdi, ..., adagio, 66 BPM, F# minor, 4/4"``.
    """
    parts: list[str] = []
    for key in _TAG_ORDER:
        value = tags.get(key)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, (list, tuple)):
            parts += [str(v) for v in value]
        elif key == "bpm":
            parts.append(f"{value} BPM")
        else:
            parts.append(str(value))
    return ", ".join(parts)


def _true_caption(record: ClipRecord) -> str | None:
    caption = (record.meta or {}).get("true_caption")
    return caption if isinstance(caption, str) and caption.strip() else None


class _Split:
    """The clips of one split: log-mels and caption indices into the text table."""

    def __init__(self, name: str):
        self.name = name
        self.mels: list[torch.Tensor] = []
        self.captions: list[str] = []
        self.sentence_ids: list[int] = []
        self.tag_ids: list[int | None] = []


def _load_splits(
    manifest: str | os.PathLike,
    scorer: EmbeddedClapScorer,
    log: Callable[[str], None],
) -> tuple[dict[str, _Split], list[str]]:
    """Reads the manifest, decodes and log-mels every clip with a true caption."""
    manifest = Path(manifest)
    records = read_manifest(manifest)
    texts: list[str] = []
    text_index: dict[str, int] = {}

    def text_id(text: str) -> int:
        if text not in text_index:
            text_index[text] = len(texts)
            texts.append(text)
        return text_index[text]

    splits = {name: _Split(name) for name in ("train", "valid", "test")}
    skipped = 0
    for record in records:
        caption = _true_caption(record)
        if record.split not in splits or caption is None:
            skipped += 1
            continue
        wave, _ = load_audio(
            record.audio_path(manifest.parent),
            sample_rate=scorer.sample_rate,
            offset=float(record.offset or 0.0),
            duration=record.duration,
            allow_silent=True,
        )
        split = splits[record.split]
        split.mels.append(scorer.log_mel(normalize_waveform(wave)).cpu())
        split.captions.append(caption)
        split.sentence_ids.append(text_id(caption))
        tags = (record.meta or {}).get("tags")
        tag_text = tag_caption(tags) if isinstance(tags, Mapping) else ""
        split.tag_ids.append(text_id(tag_text) if tag_text else None)
    if skipped:
        log(f"skipped {skipped} clip(s) outside train/valid/test or without meta.true_caption")
    if len(splits["train"].mels) < 2:
        raise QamdtError(f"{manifest}: need at least 2 train clips with meta.true_caption")
    if not splits["valid"].mels:
        raise QamdtError(f"{manifest}: no valid clips with meta.true_caption to select on")
    return splits, texts


# ------------------------------------------------------------------------------ training


def _contrastive_loss(
    audio: torch.Tensor, text: torch.Tensor, groups: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE; every pair with the same group id is a positive."""
    logits = scale * audio @ text.T
    positives = (groups[:, None] == groups[None, :]).to(logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    a2t = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    t2a = torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (a2t + t2a) / 2


def _random_crop(mel: torch.Tensor, frames: int, rng: np.random.Generator) -> torch.Tensor:
    if mel.shape[1] <= frames:
        return F.pad(mel, (0, frames - mel.shape[1]), value=math.log(1e-5))
    start = int(rng.integers(0, mel.shape[1] - frames + 1))
    return mel[:, start : start + frames]


def _spec_augment(
    mel: torch.Tensor, freq_mask: int, time_mask: int, fill: float, rng: np.random.Generator
) -> torch.Tensor:
    """One frequency band and one time span of random width set to ``fill``."""
    mel = mel.clone()
    for axis, limit in ((0, freq_mask), (1, time_mask)):
        width = int(rng.integers(0, limit + 1)) if limit > 0 else 0
        if 0 < width < mel.shape[axis]:
            start = int(rng.integers(0, mel.shape[axis] - width + 1))
            mel.narrow(axis, start, width).fill_(fill)
    return mel


def _evaluate(
    scorer: EmbeddedClapScorer, split: _Split, text_features: torch.Tensor
) -> dict[str, float]:
    audio_emb = scorer.embed_mels(split.mels, batch_size=32)
    with torch.no_grad():
        scorer.heads.eval()
        text_emb = scorer.heads.embed_sentences(text_features[split.sentence_ids])
    return retrieval_metrics(audio_emb, text_emb.cpu().numpy(), split.captions)


def _selection_key(metrics: Mapping[str, float], select_metric: str) -> tuple[float, ...]:
    return tuple(metrics[k] for k in (select_metric, *_TIE_BREAKERS))


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_embedded_clap(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    max_minutes: float | None = None,
    *,
    config: EmbeddedClapConfig | Mapping[str, Any] | None = None,
    weight_decay: float = 0.05,
    tag_caption_prob: float = 0.25,
    freq_mask: int = 12,
    time_mask: int = 60,
    warmup_epochs: float = 1.0,
    select_metric: str = "t2a_r1",
    resume: bool = False,
    mixed_precision: str = "auto",
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Trains the embedded CLAP model on a corpus manifest and saves the best epoch.

    Args:
        manifest: Corpus ``manifest.jsonl`` (clips need ``meta.true_caption``; train and
            valid splits are required, test is evaluated when present).
        out_dir: Output folder (see the module docstring).
        epochs: Passes over the train split.
        batch_size: Clips per step (the negatives of each contrastive step).
        lr: Peak AdamW learning rate (linear warmup, cosine decay over ``epochs``).
        seed: Seed of everything random.
        max_minutes: Stop before an epoch that would end past this budget (counted from
            the start, data loading included); ``None``: no limit.
        config: Model hyperparameters (:class:`EmbeddedClapConfig` or its dict).
        weight_decay: AdamW weight decay (not applied to biases, norms or the scale).
        tag_caption_prob: Probability of pairing a train clip with the tag-list form of
            its truth instead of the sentence.
        freq_mask: SpecAugment: the widest band of mel bins set to the mean level in
            each training crop (a random width in ``[0, freq_mask]``); 0 disables it.
        time_mask: Like ``freq_mask`` for a span of frames (60 frames = 0.7 s).
        warmup_epochs: Length of the linear learning-rate warmup.
        select_metric: Validation metric that picks the kept epoch (one of
            ``SELECT_METRICS``); ties go to ``t2a_r5``, then caption-level recall.
        resume: Continue from ``out_dir/checkpoint.pt`` when it exists.
        mixed_precision: "bf16": the embedding heads' forward passes under bfloat16
            autocast (weights, loss and optimiser stay float32); "auto": so where the
            device computes bfloat16 natively (:func:`qamdt.training.precision.native_bfloat16`);
            "no": float32. Evaluation and the saved model are float32 either way.
        device: Where to train.
        log: Progress messages go here; ``None`` silences them.

    Returns:
        The content of ``metrics.json``.

    Raises:
        ConfigError: On an invalid argument.
        QamdtError: If the manifest lacks train or valid clips with true captions.
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise ConfigError(
            f"need epochs >= 1, batch_size >= 2 and lr > 0, got {epochs}, {batch_size}, {lr}"
        )
    if select_metric not in SELECT_METRICS:
        raise ConfigError(f"select_metric must be one of {SELECT_METRICS}, got {select_metric!r}")
    if not 0 <= tag_caption_prob <= 1:
        raise ConfigError(f"tag_caption_prob must be in [0, 1], got {tag_caption_prob}")
    check_mixed_precision(mixed_precision, BFLOAT16_PRECISIONS)
    device = torch.device(device)
    bfloat16 = use_bfloat16(mixed_precision, device)
    say = log or (lambda _message: None)
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    scorer = EmbeddedClapScorer(config).to(device)
    splits, texts = _load_splits(manifest, scorer, say)
    text_features = scorer.text_features(texts, batch_size=64)
    train = splits["train"]
    data_seconds = time.monotonic() - started
    say(
        f"data: {len(train.mels)} train, {len(splits['valid'].mels)} valid, "
        f"{len(splits['test'].mels)} test clips, {len(texts)} distinct texts "
        f"({data_seconds:.0f} s)"
    )

    heads = scorer.heads
    decay = [p for n, p in heads.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in heads.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=lr,
    )
    steps_per_epoch = max(1, len(train.mels) // batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = max(1, round(warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _cosine_lr(step, total_steps, warmup_steps)
    )

    start_epoch, best, best_epoch, history = 0, None, None, []
    checkpoint_path = out_dir / CHECKPOINT_NAME
    saved = _load_checkpoint(checkpoint_path, say) if resume else None
    if saved is not None:
        heads.load_state_dict(saved["heads"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch, best_epoch = int(saved["epoch"]) + 1, saved["best_epoch"]
        best = json.loads(saved["best"]) if saved["best"] else None
        history = json.loads(saved["history"])
        say(f"resumed after epoch {start_epoch - 1}")
    # The log restarts from the checkpoint's history (empty for a fresh run), dropping
    # lines of an epoch that was logged but not checkpointed.
    with open(out_dir / LOG_NAME, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(entry, sort_keys=True) + "\n" for entry in history)

    sentence_ids = torch.tensor(train.sentence_ids)
    tag_ids = torch.tensor([t if t is not None else -1 for t in train.tag_ids])
    epoch_seconds: list[float] = []
    for epoch in range(start_epoch, epochs):
        elapsed = time.monotonic() - started
        if max_minutes is not None and epoch_seconds:
            if elapsed + np.mean(epoch_seconds[-3:]) > 60 * max_minutes:
                say(f"stopping before epoch {epoch}: max_minutes={max_minutes} reached")
                break
        tick = time.monotonic()
        rng = np.random.default_rng([seed, epoch])
        torch.manual_seed(seed * 100003 + epoch)
        heads.train()
        order = rng.permutation(len(train.mels))
        losses = []
        for step in range(steps_per_epoch):
            rows = order[step * batch_size : (step + 1) * batch_size]
            crops = [_random_crop(train.mels[i], scorer.window_frames, rng) for i in rows]
            if freq_mask or time_mask:
                fill = scorer.config.mel_mean
                crops = [_spec_augment(c, freq_mask, time_mask, fill, rng) for c in crops]
            mels = torch.stack(crops).to(device)
            use_tag = rng.random(len(rows)) < tag_caption_prob
            ids = torch.where(
                torch.from_numpy(use_tag) & (tag_ids[rows] >= 0), tag_ids[rows], sentence_ids[rows]
            )
            with torch.autocast(device.type, torch.bfloat16, enabled=bfloat16):
                audio = heads.embed_windows(mels)
                text = heads.embed_sentences(text_features[ids.to(text_features.device)])
            loss = _contrastive_loss(
                audio.float(), text.float(), sentence_ids[rows].to(device), heads.logit_scale()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        valid = _evaluate(scorer, splits["valid"], text_features)
        epoch_seconds.append(time.monotonic() - tick)
        entry = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "lr": float(scheduler.get_last_lr()[0]),
            "logit_scale": float(heads.logit_scale().detach()),
            "seconds": round(epoch_seconds[-1], 2),
            "valid": valid,
        }
        history.append(entry)
        with open(out_dir / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        improved = best is None or _selection_key(valid, select_metric) > _selection_key(
            best, select_metric
        )
        if improved:
            best, best_epoch = valid, epoch
            save_best_model(scorer, out_dir)
        _save_checkpoint(
            checkpoint_path,
            {
                "heads": heads.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best": json.dumps(best),
                "history": json.dumps(history),
            },
        )
        say(
            f"epoch {epoch}: loss {entry['loss']:.3f}, valid t2a R@1 {valid['t2a_r1']:.3f} "
            f"R@5 {valid['t2a_r5']:.3f}, caption t2a R@1 {valid['caption_t2a_r1']:.3f}"
            f"{' *' if improved else ''} ({epoch_seconds[-1]:.1f} s)"
        )

    if best_epoch is None:
        raise QamdtError("no epoch was trained: max_minutes is too small")
    final = EmbeddedClapScorer.from_pretrained(out_dir).to(device)
    final_features = final.text_features(texts, batch_size=64)
    metrics: dict[str, Any] = {
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "select_metric": select_metric,
        "valid": _evaluate(final, splits["valid"], final_features),
    }
    if splits["test"].mels:
        metrics["test"] = _evaluate(final, splits["test"], final_features)
    metrics.update(
        {
            "train_clips": len(train.mels),
            "distinct_texts": len(texts),
            "data_seconds": round(data_seconds, 1),
            "train_seconds": round(float(np.sum(epoch_seconds)), 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "settings": {
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "seed": seed,
                "weight_decay": weight_decay,
                "tag_caption_prob": tag_caption_prob,
                "freq_mask": freq_mask,
                "time_mask": time_mask,
                "warmup_epochs": warmup_epochs,
                "max_minutes": max_minutes,
                "mixed_precision": precision_used(bfloat16),
            },
        }
    )
    with open(out_dir / METRICS_NAME, "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
        handle.write("\n")
    checkpoint_path.unlink(missing_ok=True)
    _previous(checkpoint_path).unlink(missing_ok=True)
    return metrics


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_best_model(scorer: EmbeddedClapScorer, out_dir: Path) -> None:
    """Writes ``scorer`` into the run folder, each of its files replaced atomically.

    The model is saved into a staging folder first, so a kill while it is written leaves
    the previous best model's files in place (and the staging folder, which the next save
    replaces).
    """
    staging = out_dir / ".best-model.new"
    if staging.exists():
        shutil.rmtree(staging)
    scorer.save_pretrained(staging)
    for path in sorted(staging.iterdir()):
        fsync_path(path)
        os.replace(path, out_dir / path.name)
    fsync_path(out_dir)
    staging.rmdir()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Writes the checkpoint atomically and flushed to disk; the last one is kept beside it."""
    with atomic_path(path, durable=True) as temporary:
        torch.save(state, temporary)
        if path.is_file():
            os.replace(path, _previous(path))


def _load_checkpoint(path: Path, say) -> dict[str, Any] | None:
    """The checkpoint, or the one before it when it cannot be read (with a message)."""
    for candidate in (path, _previous(path)):
        if not candidate.is_file():
            continue
        try:
            return load_torch_checkpoint(candidate)
        except CheckpointError as error:
            say(f"{error}; trying the previous checkpoint")
    return None

"""Training of the ``embedded`` captioner on a corpus manifest, selected by caption tag F1.

``train_embedded_captioner`` decodes every clip once and keeps its whole-clip log-mel in
memory (float16), trains on random ``window_seconds`` crops of the training split with
targets from ``meta.tags``, and after each epoch captions the validation split and scores
the sentences with ``captioning.tags`` (the tags read back from each caption against the
clip's true tags). The best epoch is kept; its instrument threshold is then chosen on the
validation split too. ``out_dir`` receives the captioner (``config.json`` +
``model.safetensors``, loadable with ``captioning.base.load_captioner(out_dir)``),
``train_log.jsonl`` (one line per epoch) and ``metrics.json``, which also scores the test
split: the generated captions, the rows' original captions and their true captions (with
``test_captions.jsonl`` holding the generated ones).
"""

from __future__ import annotations

import copy
import dataclasses
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
from torch import nn

from captioning.embedded_captioner import EmbeddedCaptioner
from captioning.tagger_labels import build_vocab, clip_labels, encode_targets
from captioning.tagger_model import CLASS_FIELDS, EmbeddedCaptionerConfig
from captioning.tags import corpus_tag_f1, tags_from_meta
from qamdt.audio_io import load_audio, prepare_clips
from qamdt.checkpoint_folders import CheckpointFolders
from qamdt.checkpoints import load_torch_checkpoint
from qamdt.errors import QamdtError
from qamdt.json_files import write_text_atomic
from qamdt.manifest import ClipRecord, read_manifest
from qamdt.training.precision import (
    BFLOAT16_PRECISIONS,
    check_mixed_precision,
    precision_used,
    use_bfloat16,
)

LOG_NAME = "train_log.jsonl"
METRICS_NAME = "metrics.json"
TEST_CAPTIONS_NAME = "test_captions.jsonl"
# Instrument thresholds tried on the validation split once the best epoch is known.
THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
EVAL_BATCH = 32


@dataclasses.dataclass
class _Split:
    records: list[ClipRecord]
    mels: list[np.ndarray]  # float16 (n_mels, frames)

    @property
    def tags(self) -> list[Mapping[str, Any]]:
        return [r.meta["tags"] for r in self.records]


def _has_tags(record: ClipRecord) -> bool:
    return isinstance((record.meta or {}).get("tags"), Mapping)


def _decode(
    records: list[ClipRecord], root: Path, captioner: EmbeddedCaptioner
) -> list[np.ndarray]:
    mels = []
    for record in records:
        wave, rate = load_audio(
            record.audio_path(root),
            offset=record.offset,
            duration=record.duration,
            allow_silent=True,
        )
        prepared = prepare_clips([wave], rate, captioner.sample_rate)[0]
        mels.append(captioner.log_mel(prepared).astype(np.float16))
    return mels


def _build_config(
    train: list[Mapping[str, Any]], overrides: Mapping[str, Any]
) -> EmbeddedCaptionerConfig:
    bpms = [b for b in (clip_labels(t)["bpm"] for t in train) if b and b > 0]
    logs = np.log(bpms) if bpms else np.array([math.log(90.0)])
    values: dict[str, Any] = {
        "vocab": build_vocab(train),
        "bpm_log_mean": float(logs.mean()),
        "bpm_log_std": float(max(logs.std(), 0.05)),
    }
    values.update(overrides)
    return EmbeddedCaptionerConfig(**values)


def _crop_batch(
    mels: list[np.ndarray], size: int, floor: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = np.full((len(mels), mels[0].shape[0], size), floor, dtype=np.float32)
    lengths = []
    for row, mel in enumerate(mels):
        frames = mel.shape[1]
        if frames > size:
            start = int(rng.integers(0, frames - size + 1))
            batch[row] = mel[:, start : start + size]
            lengths.append(size)
        else:
            batch[row, :, :frames] = mel
            lengths.append(frames)
    return torch.from_numpy(batch), torch.tensor(lengths)


def _spec_augment(
    mels: torch.Tensor, lengths: torch.Tensor, fill: float, rng: np.random.Generator
) -> torch.Tensor:
    """Sets two mel bands (up to 10 bins) and two time spans (up to 10%) of each row."""
    n_mels = mels.shape[1]
    for row in range(mels.shape[0]):
        frames = int(lengths[row])
        for _ in range(2):
            width = int(rng.integers(0, 11))
            start = int(rng.integers(0, n_mels - width + 1))
            mels[row, start : start + width, :] = fill
            width = int(rng.integers(0, max(1, frames // 10) + 1))
            start = int(rng.integers(0, frames - width + 1))
            mels[row, :, start : start + width] = fill
    return mels


def _stack_targets(targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    out = {"instruments": torch.from_numpy(np.stack([t["instruments"] for t in targets]))}
    for head in CLASS_FIELDS:
        out[head] = torch.tensor([t[head] for t in targets], dtype=torch.long)
    out["bpm"] = torch.tensor([t["bpm"] for t in targets], dtype=torch.float32)
    return out


def _loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the heads' losses; a head whose labels are all unknown in the batch adds 0."""
    terms = []
    if "instruments" in out:
        bce = nn.functional.binary_cross_entropy_with_logits
        terms.append(bce(out["instruments"], target["instruments"]))
    for head in CLASS_FIELDS:
        if head in out and (target[head] >= 0).any():
            terms.append(nn.functional.cross_entropy(out[head], target[head], ignore_index=-100))
    if "bpm" in out:
        known = torch.isfinite(target["bpm"])
        if known.any():
            terms.append(nn.functional.smooth_l1_loss(out["bpm"][known], target["bpm"][known]))
    return torch.stack(terms).sum()


def _summary(scores: Mapping[str, Any]) -> dict[str, Any]:
    """Rounded P/R/F1 per field (counts dropped), for logs."""
    return {
        field: {k: round(float(v), 4) for k, v in s.items() if k in ("precision", "recall", "f1")}
        for field, s in scores.items()
        if isinstance(s, Mapping)
    }


def evaluate_captions(captions: list[str | None], tags: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Tag scores of captions against the clips' true ``meta.tags`` (``None``: no caption)."""
    return corpus_tag_f1(zip(captions, [tags_from_meta(t) for t in tags], strict=True))


def _valid_f1(captioner: EmbeddedCaptioner, logits: list, valid: _Split) -> dict[str, Any]:
    captions = [captioner.sentence(captioner.decode(lg)) for lg in logits]
    return evaluate_captions(captions, valid.tags)


def _tune_threshold(captioner: EmbeddedCaptioner, valid: _Split) -> dict[str, float]:
    """Sets the instrument threshold with the best validation F1 (ties: nearest 0.5)."""
    logits = captioner.logits_from_mels(valid.mels, EVAL_BATCH)
    results = {}
    for threshold in THRESHOLDS:
        captioner.config.instrument_threshold = threshold
        results[threshold] = _valid_f1(captioner, logits, valid)["overall"]["f1"]
    best = max(THRESHOLDS, key=lambda t: (results[t], -abs(t - 0.5)))
    captioner.config.instrument_threshold = best
    return {str(t): round(f1, 4) for t, f1 in results.items()}


class _Trainer:
    """The optimisation loop over cached log-mels."""

    def __init__(
        self,
        captioner: EmbeddedCaptioner,
        train: _Split,
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        augment: bool,
        seed: int,
        bfloat16: bool = False,
    ):
        self.captioner = captioner
        self.bfloat16 = bfloat16
        self.model = captioner.model
        self.train = train
        self.batch_size = batch_size
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.targets = [encode_targets(t, captioner.config) for t in train.tags]
        self.floor = math.log(self.model.mel.spec.log_floor)
        self.steps_per_epoch = math.ceil(len(train.mels) / batch_size)
        total = epochs * self.steps_per_epoch
        warmup = max(1, round(0.05 * total))
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lr, weight_decay=weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: (
                (s + 1) / warmup
                if s < warmup
                else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
            ),
        )

    def save(self, folder: Path, best: dict[str, Any]) -> None:
        """Writes what a resumed run needs: weights, optimiser, schedule, random states, best."""
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "best_state": best["state"],
            "best": json.dumps({"score": best["score"], "epoch": best["epoch"]}),
        }
        torch.save(state, folder / "state.pt")

    def load(self, folder: Path) -> dict[str, Any]:
        """Restores what :meth:`save` wrote; returns the best epoch so far."""
        state = load_torch_checkpoint(folder / "state.pt")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        return {**json.loads(state["best"]), "state": state["best_state"]}

    def epoch(self, deadline: float | None) -> tuple[list[float], bool]:
        """One pass over the training clips; returns the losses and whether time ran out."""
        self.model.train()
        order = self.rng.permutation(len(self.train.mels))
        losses = []
        for step in range(self.steps_per_epoch):
            chosen = order[step * self.batch_size : (step + 1) * self.batch_size]
            mels, lengths = _crop_batch(
                [self.train.mels[i] for i in chosen],
                self.captioner.window_frames,
                self.floor,
                self.rng,
            )
            if self.augment:
                mels = _spec_augment(mels, lengths, self.captioner.config.mel_mean, self.rng)
            target = _stack_targets([self.targets[i] for i in chosen])
            with torch.autocast("cpu", torch.bfloat16, enabled=self.bfloat16):
                out = self.model(mels, lengths)
            loss = _loss({name: value.float() for name, value in out.items()}, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(float(loss.detach()))
            if deadline is not None and time.monotonic() > deadline:
                return losses, True
        return losses, False


def train_embedded_captioner(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    max_minutes: float | None = None,
    *,
    model_config: Mapping[str, Any] | None = None,
    weight_decay: float = 1e-2,
    augment: bool = True,
    tune_threshold: bool = True,
    train_split: str = "train",
    valid_split: str = "valid",
    test_split: str = "test",
    num_threads: int | None = 1,
    mixed_precision: str = "auto",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Trains the ``embedded`` captioner and saves the best epoch.

    Args:
        manifest: Corpus manifest whose rows carry ``meta.tags`` (rows without are skipped).
        out_dir: Output folder: the saved captioner, ``train_log.jsonl``, ``metrics.json``
            and ``test_captions.jsonl`` (when there is a test split).
        epochs: Passes over the training clips (one random crop per clip and pass).
        batch_size: Crops per step.
        lr: Peak AdamW learning rate (linear warm-up over the first 5% of steps, then
            cosine decay to 0 over ``epochs``).
        seed: Seed of initialisation, shuffling, crops, masks and dropout; a run repeats
            exactly on the same machine and thread count.
        max_minutes: Stop once this much time has gone into training (the epoch under
            way is cut short and validated); ``None`` for no limit.
        model_config: ``EmbeddedCaptionerConfig`` fields to override (not ``vocab``).
        weight_decay: AdamW weight decay.
        augment: SpecAugment-style masking of the training crops (two mel bands and two
            time spans per crop, filled with the mean log-mel).
        tune_threshold: Choose the instrument threshold among ``THRESHOLDS`` by validation
            F1 after training (otherwise the config's value stays).
        train_split: Split trained on.
        valid_split: Split that selects the best epoch by overall tag F1 of its captions;
            without clips there, the last epoch is kept.
        test_split: Split scored in ``metrics.json`` once training ends.
        num_threads: Torch CPU threads for the run (restored afterwards); ``None`` keeps
            the current setting. The network is small: on a 2-core machine shared with
            other work one thread ran a training step about 10 times faster than two.
        mixed_precision: "bf16": the forward passes under bfloat16 autocast (weights,
            loss and optimiser stay float32); "auto": so where the CPU computes bfloat16
            natively (:func:`qamdt.training.precision.native_bfloat16`); "no": float32.
            Validation and the saved model are float32 either way.
        log: Called with one line per epoch (e.g. ``print``); ``None`` is silent.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        QamdtError: If the training split has no clip with ``meta.tags``.
        ValueError: On invalid settings.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
    check_mixed_precision(mixed_precision, BFLOAT16_PRECISIONS)
    bfloat16 = use_bfloat16(mixed_precision, torch.device("cpu"))
    overrides = dict(model_config or {})
    if "vocab" in overrides:
        raise ValueError("model_config cannot set vocab: it is built from the training data")
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        started = time.monotonic()
        manifest, out_dir = Path(manifest), Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        captioner, splits = _prepare(manifest, (train_split, valid_split, test_split), overrides)
        train, valid, test = (splits[n] for n in (train_split, valid_split, test_split))
        decode_seconds = time.monotonic() - started

        torch.manual_seed(seed)
        captioner = EmbeddedCaptioner(captioner.config)
        trainer = _Trainer(
            captioner, train, epochs, batch_size, lr, weight_decay, augment, seed, bfloat16
        )
        folders = CheckpointFolders(out_dir, log=log)
        saved = folders.recover()
        best: dict[str, Any] | None = None
        first, lines = 1, []
        if saved:
            best, lines = trainer.load(folders.current), saved["log"]
            first = saved["next_epoch"]
        log_path = out_dir / LOG_NAME
        write_text_atomic(log_path, "".join(line + "\n" for line in lines))
        train_started = time.monotonic()
        deadline = None if max_minutes is None else train_started + 60.0 * max_minutes
        epoch, out_of_time = first - 1, False
        for epoch in range(first, epochs + 1):
            losses, out_of_time = trainer.epoch(deadline)
            entry: dict[str, Any] = {
                "epoch": epoch,
                "steps": len(losses),
                "train_loss": round(float(np.mean(losses)), 5),
                "lr": trainer.optimizer.param_groups[0]["lr"],
            }
            score = float(epoch)  # without validation clips the last epoch wins
            if valid.records:
                logits = captioner.logits_from_mels(valid.mels, EVAL_BATCH)
                scores = _valid_f1(captioner, logits, valid)
                entry["valid"] = _summary(scores)
                score = scores["overall"]["f1"]
            entry["seconds"] = round(time.monotonic() - train_started, 1)
            with log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            lines.append(json.dumps(entry))
            if log is not None:
                log(json.dumps(entry))
            if best is None or score > best["score"]:
                best = {
                    "score": score,
                    "epoch": epoch,
                    "state": copy.deepcopy(trainer.model.state_dict()),
                }
            folders.save(
                lambda path, best=best: trainer.save(path, best),
                {"next_epoch": epoch + 1, "log": lines},
            )
            if out_of_time:
                break
        train_seconds = time.monotonic() - train_started
        captioner.model.load_state_dict(best["state"])
        captioner.model.eval()
        metrics: dict[str, Any] = {
            "best_epoch": best["epoch"],
            "epochs_run": epoch,
            "stopped_by_time": out_of_time,
            "train_clips": len(train.records),
            "decode_seconds": round(decode_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "seed": seed,
            "batch_size": batch_size,
            "lr": lr,
            "threads": torch.get_num_threads(),
            "mixed_precision": precision_used(bfloat16),
        }
        if valid.records and tune_threshold:
            metrics["threshold_valid_f1"] = _tune_threshold(captioner, valid)
        metrics["instrument_threshold"] = captioner.config.instrument_threshold
        captioner.save_pretrained(out_dir)
        metrics.update(_final_scores(captioner, valid, test, out_dir))
        write_text_atomic(out_dir / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
        for folder in (folders.current, folders.previous):
            shutil.rmtree(folder, ignore_errors=True)
        return metrics
    finally:
        torch.set_num_threads(previous_threads)


def _prepare(
    manifest: Path, names: tuple[str, str, str], overrides: dict[str, Any]
) -> tuple[EmbeddedCaptioner, dict[str, _Split]]:
    """Reads the manifest, decodes the three splits and builds the config.

    The log-mel normalisation (``mel_mean``, ``mel_std``) comes from the training clips
    unless ``overrides`` sets it.
    """
    records = [r for r in read_manifest(manifest) if _has_tags(r)]
    by_split = {name: [r for r in records if r.split == name] for name in names}
    if not by_split[names[0]]:
        raise QamdtError(f"{manifest}: no '{names[0]}' clip has meta.tags to train on")
    train_tags = [r.meta["tags"] for r in by_split[names[0]]]
    captioner = EmbeddedCaptioner(_build_config(train_tags, overrides))
    splits = {
        name: _Split(recs, _decode(recs, manifest.parent, captioner))
        for name, recs in by_split.items()
    }
    sample = np.concatenate([m[:, ::4].ravel() for m in splits[names[0]].mels]).astype(np.float64)
    stats = {"mel_mean": float(sample.mean()), "mel_std": float(max(sample.std(), 1e-3))}
    config = _build_config(train_tags, {**stats, **overrides})
    return EmbeddedCaptioner(config), splits


def _final_scores(
    captioner: EmbeddedCaptioner, valid: _Split, test: _Split, out_dir: Path
) -> dict[str, Any]:
    """Validation scores of the saved captioner, and test scores of three caption sets."""
    out: dict[str, Any] = {}
    if valid.records:
        scores = evaluate_captions(captioner.captions_from_mels(valid.mels, EVAL_BATCH), valid.tags)
        out["valid"] = {"clips": scores["clips"], **_summary(scores)}
    if test.records:
        generated = captioner.captions_from_mels(test.mels, EVAL_BATCH)
        out["test"] = {
            name: {"clips": len(captions), **_summary(evaluate_captions(captions, test.tags))}
            for name, captions in (
                ("generated", generated),
                ("original", [r.original_caption for r in test.records]),
                ("true", [r.meta.get("true_caption") for r in test.records]),
            )
        }
        with (out_dir / TEST_CAPTIONS_NAME).open("w") as f:
            for record, caption in zip(test.records, generated, strict=True):
                row = {"id": record.id, "generated": caption, "original": record.original_caption}
                f.write(json.dumps(row) + "\n")
    return out

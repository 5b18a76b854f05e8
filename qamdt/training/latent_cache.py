"""Pre-computed VAE latents and text states, so frozen encoders run once, not every epoch.

A cache folder holds:

* ``cache_info.json``: what produced it (audio preset, excerpt frames, VAE config and
  scaling factor, text encoder, conditioning); a cache made by other settings is refused;
* ``shard_00000.safetensors`` ...: per clip the posterior mean and standard deviation of
  the scaled latent (so training can sample from the posterior, as LDMs do), the caption's
  text states and mask, and the quality level;
* ``shard_00000.json`` ...: the ids, captions and levels of the shard's rows and the clips
  of the shard that failed, written after its tensors, so a shard counts as done only when
  both exist (a killed run resumes by skipping finished shards);
* ``cache_build.json`` while the cache is being built: its settings and the content hashes
  of the VAE and text encoder; a partial cache of other settings or models is discarded
  with a message, never mixed in;
* ``null_text.safetensors``: the states of the empty caption (the dropped condition);
* ``failures.jsonl``: clips whose audio could not be read, with the reason.

Shards are spread over processes (``accelerate launch``); each writes its own files. Two
models trained on the same clips with other captions (a quality-aware model and its plain
baseline) can share the latents: ``build_cache(..., latents_from=first_cache)`` copies
each shard's latents from a finished cache of the same clips, audio settings and VAE, and
encodes only the captions.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from tqdm import tqdm

from qamdt.audio_spec import get_audio_spec
from qamdt.errors import ConfigError
from qamdt.json_files import (
    atomic_path,
    plain_json,
    read_json_object,
    write_json,
    write_text_atomic,
)
from qamdt.training.mdt_config import MdtTrainConfig
from qamdt.training.mdt_data import (
    ClipMelDataset,
    collate_mels,
    excerpt_frames,
    training_clips,
)

CACHE_INFO = "cache_info.json"
NULL_TEXT = "null_text.safetensors"
FAILURES = "failures.jsonl"
BUILD_STATE = "cache_build.json"
SHARD_SIZE = 64
# The cache_info fields the latents depend on (the others concern the text).
LATENT_FIELDS = ("audio", "frames", "vae_config_sha1", "scaling_factor", "split", "manifest")


def _shard_stem(index: int) -> str:
    return f"shard_{index:05d}"


def posterior_latents(vae, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled posterior mean and standard deviation of ``mel`` ``[B, T, F]``."""
    posterior = vae.posterior(mel)
    scale = vae.scaling_factor
    return (posterior.mean - vae.shift_factor) * scale, posterior.std * scale


def cache_info(config: MdtTrainConfig, vae, frames: int) -> dict[str, Any]:
    """The settings a cache depends on."""
    vae_config = json.dumps(dict(vae.config), sort_keys=True, default=str)
    return {
        "audio": get_audio_spec(config.audio).to_dict(),
        "frames": frames,
        "vae_config_sha1": hashlib.sha1(vae_config.encode()).hexdigest(),
        "scaling_factor": vae.scaling_factor,
        "text_encoder": config.text_encoder,
        "conditioning": {
            "quality_token": config.conditioning.quality_token,
            "quality_prefix": config.conditioning.quality_prefix,
        },
        "split": config.split,
        "manifest": str(Path(config.manifest).resolve()),
    }


def _check_info(cache_dir: Path, info: dict[str, Any]) -> None:
    path = cache_dir / CACHE_INFO
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    changed = sorted(key for key in info if saved.get(key) != info[key])
    if changed:
        raise ConfigError(
            f"{cache_dir}: this cache was made with other settings ({', '.join(changed)}); "
            "delete it or choose another cache folder"
        )


def _latent_source(latents_from: str | os.PathLike | None, info: dict[str, Any]) -> Path | None:
    """``latents_from`` if it is a finished cache with the same audio, VAE, split, manifest."""
    if latents_from is None or not cache_is_complete(latents_from):
        return None
    source = Path(latents_from)
    saved = json.loads((source / CACHE_INFO).read_text())
    if any(saved.get(key) != info[key] for key in LATENT_FIELDS):
        return None
    return source


def _borrowed_latents(
    source: Path | None, index: int, ids: list[str]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Shard ``index``'s latents from ``source`` (see :func:`_latent_source`), if they fit.

    They fit when the source's shard holds exactly the clips ``ids`` (so a shard with a
    failed clip is encoded again, and fails the same way).
    """
    if source is None:
        return None
    stem = _shard_stem(index)
    rows_path = source / f"{stem}.json"
    if not rows_path.is_file():
        return None
    if [row["id"] for row in json.loads(rows_path.read_text())["rows"]] != ids:
        return None
    with safetensors.safe_open(str(source / f"{stem}.safetensors"), "pt") as handle:
        return handle.get_tensor("latent_mean"), handle.get_tensor("latent_std")


def _write_shard(
    cache_dir: Path,
    index: int,
    items: range,
    dataset: ClipMelDataset,
    vae,
    text_encoder,
    device: torch.device,
    borrowed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    if borrowed is not None:
        clips = [dataset.clips[i] for i in items]
        batch = {
            "failed": [],
            "id": [clip.id for clip in clips],
            "caption": [clip.caption for clip in clips],
            "quality_level": torch.tensor([clip.quality_level for clip in clips]),
        }
    else:
        batch = collate_mels([dataset[i] for i in items])
    rows = []
    if batch["id"]:
        with torch.no_grad():
            if borrowed is not None:
                mean, std = borrowed
            else:
                mean, std = posterior_latents(vae, batch["mel"].to(device))
            states, mask = text_encoder.encode(batch["caption"], device=device)
        tensors = {
            "latent_mean": mean.float().cpu().contiguous(),
            "latent_std": std.float().cpu().contiguous(),
            "text_states": states.float().cpu().contiguous(),
            "text_mask": mask.to(torch.uint8).cpu().contiguous(),
            "quality_level": batch["quality_level"].contiguous(),
        }
        stem = _shard_stem(index)
        with atomic_path(cache_dir / f"{stem}.safetensors") as temporary:
            safetensors.torch.save_file(tensors, temporary)
        rows = [
            {"id": clip_id, "caption": caption, "quality_level": int(level)}
            for clip_id, caption, level in zip(
                batch["id"], batch["caption"], batch["quality_level"].tolist(), strict=True
            )
        ]
    write_json(cache_dir / f"{_shard_stem(index)}.json", {"rows": rows, "failed": batch["failed"]})


def build_cache(
    config: MdtTrainConfig,
    cache_dir: str | os.PathLike,
    vae=None,
    text_encoder=None,
    progress: bool = True,
    latents_from: str | os.PathLike | None = None,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Encodes every usable clip of the training split once; resumes a partial cache.

    Args:
        config: The training settings (manifest, split, audio preset, VAE, text encoder,
            conditioning).
        cache_dir: Cache folder.
        vae: A loaded :class:`~qamdt.models.vae.LatentVAE` (loaded from ``config.vae``
            when None).
        text_encoder: A loaded :class:`~qamdt.models.text_encoder.TextEncoder`.
        progress: Show a progress bar.
        latents_from: A finished cache of the same clips, audio settings and VAE weights
            (its captions may differ): shards whose clips match take its latents instead
            of running the VAE. The caller vouches for the weights; the cache info only
            records the VAE's config.
        part: ``(I, N)``: encode only the blocks of ``SHARD_SIZE`` clips whose index is
            ``I`` modulo ``N`` (jobs of an array writing into one shared cache folder).
            The part that finds every block written completes the cache; until then
            :func:`cache_is_complete` is False and ``clips`` counts this part's blocks.

    Returns:
        A summary: clips cached, shards, skipped rows, failures, borrowed shards,
        seconds, and ``complete``.
    """
    from accelerate import PartialState

    from qamdt.models.text_encoder import TextEncoder
    from qamdt.models.vae import LatentVAE

    state = PartialState(cpu=not torch.cuda.is_available())
    started = time.time()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    vae = vae or LatentVAE.from_pretrained(config.vae)
    text_encoder = text_encoder or TextEncoder.from_pretrained(config.text_encoder)
    vae.to(state.device).eval()
    text_encoder.to(state.device)
    spec = get_audio_spec(config.audio)
    frames = excerpt_frames(spec, None, vae.downsample_factor)
    info = cache_info(config, vae, frames)
    _check_info(cache_dir, info)
    if state.is_main_process:
        _check_build(cache_dir, info, vae, text_encoder)
    state.wait_for_everyone()
    clips, skipped = training_clips(
        config.manifest,
        config.split,
        config.conditioning.quality_token,
        config.conditioning.quality_prefix,
    )
    dataset = ClipMelDataset(clips, spec, frames, random_crop=False, seed=config.seed)
    shards = [range(i, min(i + SHARD_SIZE, len(clips))) for i in range(0, len(clips), SHARD_SIZE)]
    index, count = part or (0, 1)
    blocks = [i for i in range(len(shards)) if i % count == index]
    mine = blocks[state.process_index :: state.num_processes]
    todo = [i for i in mine if not (cache_dir / f"{_shard_stem(i)}.json").is_file()]
    source = _latent_source(latents_from, info)
    borrowed_shards = 0
    bar = tqdm(todo, desc="caching latents", disable=not progress or not state.is_main_process)
    for index in bar:
        ids = [clips[i].id for i in shards[index]]
        borrowed = _borrowed_latents(source, index, ids)
        borrowed_shards += borrowed is not None
        _write_shard(
            cache_dir, index, shards[index], dataset, vae, text_encoder, state.device, borrowed
        )
    state.wait_for_everyone()
    written = [(cache_dir / f"{_shard_stem(i)}.json").is_file() for i in range(len(shards))]
    complete = all(written)
    if complete and state.is_main_process:
        with torch.no_grad():
            null_states, null_mask = text_encoder.encode([""], device=state.device)
        safetensors.torch.save_file(
            {
                "text_states": null_states[0].float().cpu(),
                "text_mask": null_mask[0].to(torch.uint8).cpu(),
            },
            cache_dir / NULL_TEXT,
        )
        _merge_failures(cache_dir, len(shards))
        write_json(cache_dir / CACHE_INFO, info)
        (cache_dir / BUILD_STATE).unlink(missing_ok=True)
    state.wait_for_everyone()
    dataset_size = sum(
        len(json.loads((cache_dir / f"{_shard_stem(i)}.json").read_text())["rows"])
        for i in (range(len(shards)) if complete else blocks)
    )
    return {
        "cache": str(cache_dir),
        "clips": dataset_size,
        "shards": len(shards),
        "skipped": len(skipped),
        "failed": _count_lines(cache_dir / FAILURES),
        "borrowed_shards": borrowed_shards,
        "seconds": round(time.time() - started, 1),
        "complete": complete,
    }


def _check_build(cache_dir: Path, info: dict[str, Any], vae, text_encoder) -> None:
    """Discards a partial cache made by other settings or models; records this build's."""
    from qamdt.manifest.stage_state import content_hash

    for leftover in cache_dir.glob(".*.tmp"):  # left by a write a kill interrupted
        leftover.unlink(missing_ok=True)
    if (cache_dir / CACHE_INFO).is_file():
        return
    build = {"info": info, "vae": content_hash(vae), "text_encoder": content_hash(text_encoder)}
    saved = read_json_object(cache_dir / BUILD_STATE)
    stale = sorted(cache_dir.glob("shard_*.json"))
    if stale and saved != plain_json(build):
        why = "no build record" if not saved else "other settings or models"
        print(
            f"{cache_dir}: discarding {len(stale)} shards of a partial cache made with {why}",
            file=sys.stderr,
        )
        for path in [*stale, *cache_dir.glob("shard_*.safetensors")]:
            path.unlink()
    write_json(cache_dir / BUILD_STATE, build)


def _merge_failures(cache_dir: Path, shards: int) -> None:
    seen: dict[str, dict] = {}
    for path in [cache_dir / FAILURES, *sorted(cache_dir.glob("failures.rank*.jsonl"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    seen[row["id"]] = row
    for index in range(shards):
        for row in json.loads((cache_dir / f"{_shard_stem(index)}.json").read_text()).get(
            "failed", []
        ):
            seen[row["id"]] = row
    if seen:
        write_text_atomic(
            cache_dir / FAILURES, "".join(json.dumps(row) + "\n" for row in seen.values())
        )
    for path in cache_dir.glob("failures.rank*.jsonl"):
        path.unlink()


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def cache_is_complete(cache_dir: str | os.PathLike) -> bool:
    """Whether a cache folder was finished (its info file is written last)."""
    return (Path(cache_dir) / CACHE_INFO).is_file()


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items of a finished cache: posterior mean/std, text states, mask, level, caption.

    Shards are memory-mapped through safetensors; only the rows asked for are read.

    Args:
        cache_dir: A folder written by :func:`build_cache`.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        if not cache_is_complete(self.cache_dir):
            raise ConfigError(f"{self.cache_dir}: not a finished latent cache (run qamdt cache)")
        self.info = json.loads((self.cache_dir / CACHE_INFO).read_text())
        self.rows: list[tuple[str, int, dict]] = []
        for path in sorted(self.cache_dir.glob("shard_*.json")):
            for row_index, row in enumerate(json.loads(path.read_text())["rows"]):
                self.rows.append((path.with_suffix(".safetensors").name, row_index, row))
        if not self.rows:
            raise ConfigError(f"{self.cache_dir}: the cache holds no clips")
        null = safetensors.torch.load_file(self.cache_dir / NULL_TEXT)
        self.null_text = (null["text_states"], null["text_mask"].bool())
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self, name: str):
        if name not in self._handles:
            self._handles[name] = safetensors.safe_open(
                str(self.cache_dir / name), framework="pt", device="cpu"
            )
        return self._handles[name]

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, row_index, row = self.rows[index]
        handle = self._open(name)
        mask = handle.get_slice("text_mask")[row_index].bool()
        length = int(mask.sum().clamp(min=1))
        return {
            "latent_mean": handle.get_slice("latent_mean")[row_index],
            "latent_std": handle.get_slice("latent_std")[row_index],
            "text_states": handle.get_slice("text_states")[row_index][:length],
            "text_mask": mask[:length],
            "quality_level": int(row["quality_level"]),
            "caption": row["caption"],
            "id": row["id"],
        }

    def __getstate__(self) -> dict[str, Any]:
        # Open safetensors handles do not pickle; DataLoader workers reopen them.
        return {**self.__dict__, "_handles": {}}


def collate_cached(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks cached items, right-padding the text states to the longest caption."""
    length = max(item["text_states"].shape[0] for item in items)
    states = torch.zeros(len(items), length, items[0]["text_states"].shape[-1])
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, item in enumerate(items):
        n = item["text_states"].shape[0]
        states[i, :n] = item["text_states"]
        mask[i, :n] = item["text_mask"]
    return {
        "latent_mean": torch.stack([item["latent_mean"] for item in items]),
        "latent_std": torch.stack([item["latent_std"] for item in items]),
        "text_states": states,
        "text_mask": mask,
        "quality_level": torch.tensor([item["quality_level"] for item in items]),
        "caption": [item["caption"] for item in items],
        "id": [item["id"] for item in items],
    }

"""Training examples for the MDT: audio, caption and quality label from one manifest row.

The released loader took a clip's audio from one row and its quality label from another;
here every example is built from a single :class:`~qamdt.manifest.ClipRecord`, so audio,
caption, prefix and level cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from qamdt.audio_io import crop_or_pad, load_audio
from qamdt.audio_spec import AudioSpec, get_audio_spec
from qamdt.errors import ConfigError, QamdtError
from qamdt.manifest import read_manifest
from qamdt.mel import MelFrontEnd


@dataclasses.dataclass(frozen=True)
class TrainingClip:
    """One training example's source.

    Attributes:
        id: Clip id (manifest ``id``).
        audio: Absolute audio path.
        offset: Start in the file, seconds.
        duration: Clip length in seconds, or None (to the end of the file).
        caption: Training text (quality prefix included when configured).
        quality_level: Level 1..5, or 0 when the model is trained without quality tokens.
    """

    id: str
    audio: Path
    offset: float
    duration: float | None
    caption: str
    quality_level: int


def training_clips(
    manifest: str | os.PathLike,
    split: str = "train",
    quality_token: bool = True,
    quality_prefix: bool = True,
) -> tuple[list[TrainingClip], list[dict[str, str]]]:
    """Reads the rows of one split into training examples.

    Rows that cannot be used (an earlier stage failed on them, or a needed quality label is
    missing) are skipped and returned with the reason.

    Args:
        manifest: Manifest path.
        split: Split to read.
        quality_token: Whether the level is needed.
        quality_prefix: Whether the quality prefix goes into the caption.

    Returns:
        ``(clips, skipped)`` where ``skipped`` holds ``{"id", "reason"}`` objects.

    Raises:
        ConfigError: If no row of the split is usable.
    """
    manifest = Path(manifest)
    records = read_manifest(manifest)
    clips, skipped = [], []
    for record in records:
        if record.split != split:
            continue
        if record.errors:
            stages = ", ".join(sorted(record.errors))
            skipped.append({"id": record.id, "reason": f"earlier stage failed: {stages}"})
            continue
        if quality_token and record.quality_level is None:
            skipped.append({"id": record.id, "reason": "no quality_level (run qamdt mos stats)"})
            continue
        if quality_prefix and record.quality_prefix is None:
            skipped.append({"id": record.id, "reason": "no quality_prefix (run qamdt mos stats)"})
            continue
        clips.append(
            TrainingClip(
                id=record.id,
                audio=record.audio_path(manifest.parent),
                offset=record.offset,
                duration=record.duration,
                caption=record.training_caption(use_prefix=quality_prefix),
                quality_level=int(record.quality_level or 0) if quality_token else 0,
            )
        )
    if not clips:
        raise ConfigError(
            f"{manifest}: no usable rows in split '{split}' ({len(skipped)} skipped"
            + (f", e.g. {skipped[0]['id']}: {skipped[0]['reason']}" if skipped else "")
            + ")"
        )
    return clips, skipped


def excerpt_frames(spec: AudioSpec, clip_seconds: float | None, multiple: int) -> int:
    """Mel frames of a training excerpt, rounded down to a multiple of the VAE's factor."""
    frames = spec.clip_frames
    if clip_seconds is not None:
        frames = int(clip_seconds * spec.sample_rate / spec.hop_length)
    frames -= frames % multiple
    if frames < multiple:
        raise ConfigError(f"clip_seconds {clip_seconds}: shorter than one latent frame")
    return frames


class ClipMelDataset(torch.utils.data.Dataset):
    """Log-mel excerpts of training clips.

    Items are dicts with ``mel`` ``[frames, n_mels]``, ``caption``, ``quality_level`` and
    ``id``, or None for a clip whose audio cannot be read (the collate function drops it
    and counts it, so one bad file does not stop a run).

    Args:
        clips: The examples.
        spec: Audio preset (or its name).
        frames: Mel frames per item.
        random_crop: Random excerpt (training) or the start of the clip (caching).
        seed: Seed of the random excerpts; combined with the epoch and the index.
    """

    def __init__(
        self,
        clips: list[TrainingClip],
        spec: AudioSpec | str,
        frames: int,
        random_crop: bool = True,
        seed: int = 0,
    ):
        self.clips = clips
        self.spec = get_audio_spec(spec) if isinstance(spec, str) else spec
        self.frames = frames
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0
        self.front_end = MelFrontEnd(self.spec)

    def set_epoch(self, epoch: int) -> None:
        """Changes the random excerpts for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def load_wave(self, index: int) -> np.ndarray:
        """The excerpt's waveform, ``frames * hop`` samples at the preset's rate."""
        clip = self.clips[index]
        wave, _ = load_audio(
            clip.audio, self.spec.sample_rate, offset=clip.offset, duration=clip.duration
        )
        rng = np.random.default_rng([self.seed, self.epoch, index])
        mode = "random" if self.random_crop else "start"
        excerpt, _ = crop_or_pad(wave, self.frames * self.spec.hop_length, mode=mode, rng=rng)
        return excerpt

    def __getitem__(self, index: int) -> dict | None:
        clip = self.clips[index]
        try:
            wave = self.load_wave(index)
        except QamdtError as error:
            return {"failed": clip.id, "reason": str(error)}
        with torch.no_grad():
            mel = self.front_end(torch.from_numpy(np.ascontiguousarray(wave))).T
        return {
            "mel": mel[: self.frames].contiguous(),
            "caption": clip.caption,
            "quality_level": clip.quality_level,
            "id": clip.id,
        }


def collate_mels(items: list[dict]) -> dict:
    """Stacks mel items; failed items are listed under ``failed``."""
    good = [item for item in items if "failed" not in item]
    failed = [
        {"id": item["failed"], "reason": item["reason"]} for item in items if "failed" in item
    ]
    batch = {
        "failed": failed,
        "caption": [item["caption"] for item in good],
        "id": [item["id"] for item in good],
        "quality_level": torch.tensor([item["quality_level"] for item in good], dtype=torch.long),
    }
    batch["mel"] = torch.stack([item["mel"] for item in good]) if good else None
    return batch

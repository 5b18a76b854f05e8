"""The VAE's training data: log-mels of whole clips in memory and the crops of each step."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from qamdt.audio_io import crop_or_pad, resample
from qamdt.audio_spec import AudioSpec
from qamdt.errors import QamdtError
from qamdt.manifest import read_manifest
from qamdt.manifest.stages import load_clip_audio
from qamdt.mel import MelFrontEnd
from qamdt.training.vae_config import VaeTrainConfig


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


def load_splits(config: VaeTrainConfig, spec: AudioSpec, show: bool):
    """Training and validation mels, falling back to the test split for validation.

    Args:
        config: Names the manifest and the two splits.
        spec: Audio preset of the mels.
        show: Show progress bars.

    Returns:
        The training :class:`MelSet`, the validation one and the validation split's name.

    Raises:
        QamdtError: If the training split has no usable clip.
    """
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

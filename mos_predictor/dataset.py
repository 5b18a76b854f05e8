"""The torch dataset of rated clips: fixed-length, normalised windows for a MOS model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mos_predictor.ratings import RatedClip
from qamdt.audio_io import audio_info, crop_or_pad, load_audio, normalize_waveform
from qamdt.errors import AudioError

#: Default ``cache_limit_bytes`` of :class:`RatedClipDataset`: the decoded audio of all
#: clips (float32 at the dataset's rate) is cached when it is estimated to fit in this.
DEFAULT_CACHE_LIMIT_BYTES = 2 * 1024**3


class RatedClipDataset(torch.utils.data.Dataset):
    """Fixed-length, normalised windows of rated clips for a MOS model.

    Each item is the clip's audio (its ``offset``/``duration`` span) at ``sample_rate``,
    normalised with :func:`~qamdt.audio_io.normalize_waveform`, then cut or zero-padded to
    ``window_seconds``: a random window in training (seeded from ``(seed, epoch, index)``,
    so runs are reproducible; call :meth:`set_epoch` each epoch for new windows) and the
    centre window otherwise.

    Decoded audio can be kept in memory (``cache``), since decoding and resampling the same
    files every epoch is wasted work on a small corpus. With ``cache=None`` it is on when
    the decoded audio is estimated (from the clips' durations, or file headers) to fit in
    ``cache_limit_bytes`` as float32. With a multi-process DataLoader each worker fills its
    own copy (keep workers alive with ``persistent_workers=True`` to profit from it).

    Args:
        clips: The clips.
        sample_rate: Rate the model expects, in Hz.
        window_seconds: Length of the windows, in seconds.
        train: Random windows (True) or centre windows (False).
        seed: Seed of the random windows.
        cache: Keep decoded audio in memory: True, False, or None to decide by size.
        cache_limit_bytes: The size limit of ``cache=None``.

    Raises:
        ValueError: On a non-positive sample rate or window.
    """

    def __init__(
        self,
        clips: Sequence[RatedClip],
        sample_rate: int,
        window_seconds: float,
        train: bool,
        seed: int = 0,
        cache: bool | None = None,
        cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
    ):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
        self.clips = list(clips)
        self.sample_rate = int(sample_rate)
        self.window_seconds = float(window_seconds)
        self.window = max(1, int(round(window_seconds * sample_rate)))
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        if cache is None:
            cache = self.estimated_bytes() <= cache_limit_bytes
        self.cache_enabled = bool(cache)
        self._cache: dict[int, np.ndarray] = {}

    def estimated_bytes(self) -> int:
        """Estimated size of all decoded clips as float32 at the dataset's rate.

        Returns:
            Bytes; clips without a duration are measured from their file header, and
            unreadable files count as nothing (they fail when loaded).
        """
        seconds = 0.0
        for clip in self.clips:
            if clip.duration is not None:
                seconds += clip.duration
                continue
            try:
                seconds += max(0.0, audio_info(clip.path)["duration"] - clip.offset)
            except AudioError:
                pass
        return int(seconds * self.sample_rate * 4)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the random training windows.

        Args:
            epoch: The epoch number.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, index: int) -> np.ndarray:
        """Decoded, normalised audio of a whole clip (from the cache when enabled).

        Args:
            index: Position of the clip.

        Returns:
            float32 ``(samples,)`` at ``sample_rate``.

        Raises:
            AudioError: If the file cannot be used, naming it and the clip.
        """
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        clip = self.clips[index]
        try:
            wave, _ = load_audio(
                clip.path,
                sample_rate=self.sample_rate,
                offset=clip.offset,
                duration=clip.duration,
                allow_silent=True,
            )
        except AudioError as exc:
            raise AudioError(clip.path, f"{exc.reason} (clip {clip.id!r})") from exc
        except (ValueError, OSError) as exc:
            raise AudioError(clip.path, f"{exc} (clip {clip.id!r})") from exc
        wave = normalize_waveform(wave)
        if self.cache_enabled:
            self._cache[index] = wave
        return wave

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        wave = self.load(index)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            window, _ = crop_or_pad(wave, self.window, mode="random", rng=rng)
        else:
            window, _ = crop_or_pad(wave, self.window, mode="center")
        return {
            "wave": torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)),
            "mos": float(clip.mos),
            "ta": float("nan") if clip.ta is None else float(clip.ta),
            "caption": clip.caption or "",
            "index": int(index),
        }


def collate_rated(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack :class:`RatedClipDataset` items into a batch.

    Args:
        batch: Items with ``wave`` of equal length.

    Returns:
        ``{"wave": (B, S) float32, "mos": (B,) float32, "ta": (B,) float32 (nan where
        unknown), "caption": list of B strings, "index": (B,) int64}``.
    """
    return {
        "wave": torch.stack([item["wave"] for item in batch]),
        "mos": torch.tensor([item["mos"] for item in batch], dtype=torch.float32),
        "ta": torch.tensor([item["ta"] for item in batch], dtype=torch.float32),
        "caption": [item["caption"] for item in batch],
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.int64),
    }


def random_gain(waves: torch.Tensor, max_db: float, generator: torch.Generator) -> torch.Tensor:
    """Each row times its own gain, uniform in decibels in ``[-max_db, max_db]``.

    Training's level augmentation: the inputs arrive peak-normalised, and at prediction a
    window of a longer clip sits at any level below the clip's peak.

    Args:
        waves: ``(B, S)`` windows.
        max_db: Largest gain or attenuation, in dB (0: ``waves`` unchanged).
        generator: Source of the gains (CPU).

    Returns:
        ``(B, S)`` scaled windows, on ``waves``' device and in its dtype.
    """
    if max_db <= 0:
        return waves
    db = (torch.rand(waves.shape[0], generator=generator) * 2 - 1) * max_db
    gains = torch.pow(10.0, db / 20).to(device=waves.device, dtype=waves.dtype)
    return waves * gains[:, None]

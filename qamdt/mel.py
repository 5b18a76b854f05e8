"""Log-mel front end with the AudioLDM / HiFi-GAN STFT conventions, batched and device-aware.

The computation matches ``mel_spectrogram`` of HiFi-GAN's ``meldataset.py`` and AudioLDM's
``TacotronSTFT``:

1. reflect-pad the waveform by ``(n_fft - hop) / 2`` samples on each side;
2. ``torch.stft(center=False, onesided=True)`` with a periodic Hann window;
3. magnitude ``sqrt(re^2 + im^2 + 1e-9)``;
4. multiply by the Slaney-normalised librosa mel basis;
5. natural log of the mel energies clamped at ``spec.log_floor``.

The ``1e-9`` inside the square root follows HiFi-GAN: the gradient of ``sqrt`` is infinite
at 0, so without it a silent frame would give NaN gradients. It lifts the magnitude of an
empty bin to about 3e-5, whose mel energy stays below the log floor.
"""

from __future__ import annotations

import librosa
import numpy as np
import scipy.signal
import torch

from qamdt.audio_spec import AudioSpec, get_audio_spec

MAGNITUDE_EPS = 1e-9
CPU_FRAMES_PER_CALL = 1024


class MelFrontEnd(torch.nn.Module):
    """Waveform to log-mel spectrogram.

    The mel basis and window are non-persistent buffers: they follow ``.to(device)`` and
    ``.to(dtype)`` and are left out of ``state_dict``. Inputs are moved to the buffers'
    device and cast to their dtype.

    Args:
        spec: An :class:`AudioSpec` or the name of a preset (``"paper"``, ``"embedded"``).

    Raises:
        ConfigError: If ``spec`` names no preset.
    """

    mel_basis: torch.Tensor
    window: torch.Tensor

    def __init__(self, spec: AudioSpec | str = "paper"):
        super().__init__()
        self.spec = get_audio_spec(spec)
        s = self.spec
        basis = librosa.filters.mel(
            sr=s.sample_rate, n_fft=s.n_fft, n_mels=s.n_mels, fmin=s.fmin, fmax=s.fmax
        )
        if s.window == "hann":
            window = torch.hann_window(s.win_length)
        else:
            window = torch.from_numpy(
                scipy.signal.get_window(s.window, s.win_length, fftbins=True)
            ).float()
        self.register_buffer("mel_basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", window, persistent=False)
        self.pad = (s.n_fft - s.hop_length) // 2

    @property
    def min_samples(self) -> int:
        """Shortest input accepted: reflect padding needs more samples than it adds."""
        return max(self.pad + 1, self.spec.hop_length)

    def frames_for(self, num_samples: int) -> int:
        """Number of frames produced for an input of ``num_samples`` samples.

        Args:
            num_samples: Input length in samples.

        Returns:
            The frame count, which with this padding is ``num_samples // hop_length``.

        Raises:
            ValueError: If ``num_samples`` is below :attr:`min_samples`.
        """
        if num_samples < self.min_samples:
            raise ValueError(
                f"need at least {self.min_samples} samples for the '{self.spec.name}' "
                f"front end, got {num_samples}"
            )
        padded = num_samples + 2 * self.pad
        return 1 + (padded - self.spec.n_fft) // self.spec.hop_length

    def _prepare(self, wave: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if not isinstance(wave, torch.Tensor):
            raise TypeError(
                f"expected a torch.Tensor, got {type(wave).__name__}; use mel_numpy for arrays"
            )
        if wave.ndim not in (1, 2):
            raise ValueError(f"expected (samples,) or (batch, samples), got {tuple(wave.shape)}")
        self.frames_for(wave.shape[-1])
        squeeze = wave.ndim == 1
        wave = wave.to(device=self.window.device, dtype=self.window.dtype)
        return (wave.unsqueeze(0) if squeeze else wave), squeeze

    def _magnitude(self, wave: torch.Tensor) -> torch.Tensor:
        s = self.spec
        padded = torch.nn.functional.pad(wave.unsqueeze(1), (self.pad, self.pad), mode="reflect")
        stft = torch.stft(
            padded.squeeze(1),
            n_fft=s.n_fft,
            hop_length=s.hop_length,
            win_length=s.win_length,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return torch.sqrt(stft.real.square() + stft.imag.square() + MAGNITUDE_EPS)

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.mel_basis, self._magnitude(wave))
        return torch.log(torch.clamp(mel, min=self.spec.log_floor))

    def _chunked(self, fn, batch: torch.Tensor) -> torch.Tensor:
        # On CPU one large STFT falls out of cache and runs several times slower than a
        # few smaller ones, so long batches go through in pieces of about
        # CPU_FRAMES_PER_CALL frames. Accelerators take the batch in one call.
        if batch.device.type != "cpu":
            return fn(batch)
        rows = max(1, CPU_FRAMES_PER_CALL // self.frames_for(batch.shape[-1]))
        if rows >= batch.shape[0]:
            return fn(batch)
        return torch.cat([fn(part) for part in batch.split(rows)])

    def magnitude(self, wave: torch.Tensor) -> torch.Tensor:
        """Linear STFT magnitude with the same padding, window and epsilon as ``forward``.

        Args:
            wave: ``(samples,)`` or ``(batch, samples)``.

        Returns:
            ``(n_fft // 2 + 1, frames)`` or ``(batch, n_fft // 2 + 1, frames)``.

        Raises:
            TypeError: If ``wave`` is not a tensor.
            ValueError: If it is not 1-D or 2-D or is shorter than :attr:`min_samples`.
        """
        batch, squeeze = self._prepare(wave)
        mag = self._chunked(self._magnitude, batch)
        return mag.squeeze(0) if squeeze else mag

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrogram.

        Args:
            wave: ``(samples,)`` or ``(batch, samples)``, any float dtype and device.

        Returns:
            ``(n_mels, frames)`` or ``(batch, n_mels, frames)`` natural-log mel energies,
            on the module's device and in its dtype. A clip of ``spec.clip_samples``
            samples gives ``spec.clip_frames`` frames.

        Raises:
            TypeError: If ``wave`` is not a tensor.
            ValueError: If it is not 1-D or 2-D or is shorter than :attr:`min_samples`.
        """
        batch, squeeze = self._prepare(wave)
        logmel = self._chunked(self._log_mel, batch)
        return logmel.squeeze(0) if squeeze else logmel

    @torch.no_grad()
    def mel_numpy(self, wave: np.ndarray) -> np.ndarray:
        """``forward`` for numpy arrays, without gradients.

        Args:
            wave: ``(samples,)`` or ``(batch, samples)``.

        Returns:
            The log-mel as a numpy array in the module's dtype (float32 by default).
        """
        out = self.forward(torch.as_tensor(np.asarray(wave)))
        return out.cpu().numpy()

    def extra_repr(self) -> str:
        """Preset and STFT settings, shown in the module's repr."""
        s = self.spec
        return (
            f"spec={s.name!r}, sample_rate={s.sample_rate}, n_fft={s.n_fft}, "
            f"hop_length={s.hop_length}, n_mels={s.n_mels}"
        )

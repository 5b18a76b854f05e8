"""Degraded versions of real-music excerpts, with their simulated reference quality.

For each excerpt, version 0 is the recording as it is (reference quality 5) and the others
go through seeded degradation chains (:mod:`qamdt.degradations`). Versions of one excerpt
share its timing, so a model that sees them side by side can only tell them apart by
their quality. Work is spread over processes; each excerpt's versions depend only on the
seed and the excerpt's position in the list, not on the number of processes.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import multiprocessing
from collections.abc import Collection, Sequence

import numpy as np

from mos_predictor.real_music import Excerpt, read_excerpt
from qamdt.audio_io import normalize_waveform, resample
from qamdt.degradations import (
    CODEC_KINDS,
    ChainSettings,
    apply_chain,
    draw_chain,
    reference_quality,
)
from qamdt.degradations.codecs import CodecError, require_tool
from qamdt.degradations.effects import tilt
from qamdt.errors import QamdtError

CODEC_TOOLS = {"mp3": ("lame",), "vorbis": ("oggenc", "oggdec"), "opus": ("opusenc", "opusdec")}


@dataclasses.dataclass
class VersionPool:
    """Excerpts and their degraded versions.

    Attributes:
        excerpts: The excerpts kept (silent ones and failures are dropped).
        waves: ``(N, V, S)`` float16, each version normalised as models see it.
        targets: ``(N, V)`` simulated reference quality.
        chains: ``chains[n][v]``: the degradations applied to version ``v``.
        failures: ``"excerpt id: reason"`` for each excerpt that could not be used.
        draw: Which draw of degradation chains the versions are (0: the first).
        made: ``(N,)`` bool, which excerpts have their versions (a pool built for some
            excerpts only); None: all.
    """

    excerpts: list[Excerpt]
    waves: np.ndarray
    targets: np.ndarray
    chains: list[list[list[dict]]]
    failures: list[str]
    draw: int = 0
    made: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.excerpts)


def check_codec_tools(kinds: Sequence[str]) -> None:
    """Fails early, naming the Debian package, when a codec kind's tools are missing.

    Raises:
        CodecError: For the first missing tool.
    """
    for kind in kinds:
        for tool in CODEC_TOOLS.get(kind, ()):
            require_tool(tool)


@dataclasses.dataclass(frozen=True)
class ContentChange:
    """A quality-preserving change of one clean excerpt: other music, the same quality.

    Attributes:
        partner: Another excerpt mixed in at equal loudness (None: none).
        balance: The excerpt's share of the mix, the partner's is ``1 - balance``.
        speed: Playback speed (resampled, so tempo and pitch move together; 1: as it is).
        tilt: Spectral tilt around 1 kHz in dB per octave, as a mastering equaliser
            would set it (0: none).
    """

    partner: Excerpt | None = None
    balance: float = 0.5
    speed: float = 1.0
    tilt: float = 0.0


@dataclasses.dataclass(frozen=True)
class ContentSettings:
    """How clean excerpts are changed before degrading (:class:`ContentChange`; all off).

    Attributes:
        mix_share: Share of the excerpts that get a partner mixed in.
        speed_range: Speeds are log-uniform within ``[1 - r, 1 + r]``.
        tilt_range: Tilts are uniform within ``[-r, r]`` dB per octave.
    """

    mix_share: float = 0.0
    speed_range: float = 0.0
    tilt_range: float = 0.0


def draw_content_changes(
    excerpts: Sequence[Excerpt], settings: ContentSettings, seed: int, draw: int
) -> list[ContentChange]:
    """One seeded content change per excerpt (the same for any number of workers).

    Args:
        excerpts: The excerpts; partners are drawn among them.
        settings: What to draw.
        seed: The pool's seed.
        draw: The pool's draw.
    """
    rng = np.random.default_rng([seed, draw, 104729])
    low, high = np.log(1 - settings.speed_range), np.log(1 + settings.speed_range)
    changes = []
    for i in range(len(excerpts)):
        # Every excerpt draws the same five numbers, whatever the settings.
        mixed, pick = rng.random(), int(rng.integers(max(len(excerpts) - 1, 1)))
        balance, speed = float(rng.uniform(0.35, 0.65)), float(np.exp(rng.uniform(low, high)))
        slope = float(rng.uniform(-settings.tilt_range, settings.tilt_range))
        partner = None
        if mixed < settings.mix_share and len(excerpts) > 1:
            partner = excerpts[pick + (pick >= i)]
        changes.append(ContentChange(partner, balance, speed, slope))
    return changes


def _read_at_speed(excerpt: Excerpt, sample_rate: int, speed: float) -> np.ndarray | None:
    if speed == 1.0:
        return read_excerpt(excerpt, sample_rate)
    longer = dataclasses.replace(excerpt, seconds=excerpt.seconds * speed)
    wave = read_excerpt(longer, sample_rate)
    if wave is None:
        return None
    wave = resample(wave, int(round(sample_rate * speed)), sample_rate)
    size = int(round(excerpt.seconds * sample_rate))
    return np.pad(wave, (0, max(0, size - wave.size)))[:size].astype(np.float32)


def read_changed(excerpt: Excerpt, sample_rate: int, change: ContentChange) -> np.ndarray | None:
    """Reads one excerpt with its content change, mono at ``sample_rate``.

    Returns:
        The changed excerpt; None when the excerpt itself is near silence (a silent
        partner is left out).

    Raises:
        AudioError: If a file cannot be read, naming it.
    """
    wave = _read_at_speed(excerpt, sample_rate, change.speed)
    if wave is not None and change.partner is not None:
        other = _read_at_speed(change.partner, sample_rate, change.speed)
        if other is not None:
            wave = change.balance * wave / _rms(wave) + (1 - change.balance) * other / _rms(other)
    if wave is not None and change.tilt:
        wave = tilt(wave, sample_rate, change.tilt)
    return None if wave is None else wave.astype(np.float32)


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave))))


def _versions_task(task: tuple) -> tuple:
    excerpt, index, sample_rate, versions, settings, seed, draw, change = task
    try:
        clean = read_changed(excerpt, sample_rate, change)
        if clean is None:
            return index, None, None, None, "near silence"
        rng = np.random.default_rng([seed, index] + ([draw] if draw else []))
        waves = [normalize_waveform(clean)]
        targets, chains = [5.0], [[]]
        for _ in range(versions - 1):
            y, applied = apply_chain(clean, sample_rate, draw_chain(rng, settings), rng)
            waves.append(normalize_waveform(y))
            targets.append(reference_quality(applied))
            chains.append(applied)
        return index, np.stack(waves).astype(np.float16), targets, chains, None
    except QamdtError as error:
        return index, None, None, None, str(error)


def degrade_task(task: tuple) -> tuple:
    """Applies one chain to one clip (a worker task of :func:`run_tasks`).

    Args:
        task: ``(key, wave, sample_rate, chain, seed)``.

    Returns:
        ``(key, normalised float32 wave or None, applied or error message)``.
    """
    key, wave, sample_rate, chain, seed = task
    try:
        y, applied = apply_chain(wave, sample_rate, chain, np.random.default_rng(seed))
        return key, normalize_waveform(y).astype(np.float32), applied
    except QamdtError as error:
        return key, None, str(error)


def run_tasks(function, tasks: list, workers: int, progress: bool = False, desc: str = ""):
    """Runs picklable tasks in ``workers`` processes (in this one for ``workers <= 1``).

    Yields:
        Each task's result, in task order.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="clip", disable=not progress, leave=False)
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            yield function(task)
            bar.update(1)
    else:
        # Spawned, not forked: the parent may hold torch's thread pools.
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for result in pool.map(function, tasks, chunksize=4):
                yield result
                bar.update(1)
    bar.close()


def build_version_pool(
    excerpts: Sequence[Excerpt],
    sample_rate: int,
    versions: int,
    settings: ChainSettings,
    seed: int,
    workers: int = 1,
    progress: bool = False,
    draw: int = 0,
    content: ContentSettings = ContentSettings(),
    only: Collection[int] | None = None,
) -> VersionPool:
    """Reads the excerpts and makes ``versions`` versions of each (the first clean).

    Args:
        excerpts: Where to read.
        sample_rate: The model's rate.
        versions: Versions per excerpt, the clean one included (>= 2).
        settings: Degradation chains to draw.
        seed: Seed of the chains.
        workers: Processes.
        progress: Show a progress bar.
        draw: Another draw of chains for the same excerpts and seed (0: the first).
        content: Changes of the clean excerpts before degrading (other music at reference
            quality 5; default: none).
        only: Make the versions of these excerpts only (indices into ``excerpts``): the
            pool keeps every excerpt in place and marks the ones made (``made``). Their
            versions are those a full build makes; should one of them fail, the others
            are made too and the pool is the full build's.

    Returns:
        The pool. Excerpts that are near silence or fail (a codec error, an unreadable
        file) are left out and listed in ``failures``.

    Raises:
        CodecError: If a codec kind is drawn from but its tool is missing.
        ValueError: If ``versions < 2`` or no excerpt could be used.
    """
    if versions < 2:
        raise ValueError(f"versions must be >= 2 (clean and degraded), got {versions}")
    check_codec_tools([k for k in settings.kinds if k in CODEC_KINDS])
    changes = draw_content_changes(excerpts, content, seed, draw)

    def make(indices) -> dict[int, tuple]:
        tasks = [
            (excerpts[i], i, sample_rate, versions, settings, seed, draw, changes[i])
            for i in indices
        ]
        results = run_tasks(_versions_task, tasks, workers, progress, "degraded versions")
        return {index: rest for index, *rest in results}

    wanted = range(len(excerpts)) if only is None else sorted(set(only))
    made = make(wanted)
    if only is not None and any(wave is None for wave, *_ in made.values()):
        made.update(make([i for i in range(len(excerpts)) if i not in made]))
        only = None
    failures = [
        f"{excerpts[i].id}: {error}"
        for i, (wave, _, _, error) in sorted(made.items())
        if wave is None and error != "near silence"
    ]
    kept = [i for i in sorted(made) if made[i][0] is not None]
    if not kept:
        raise ValueError(
            "no usable real-music excerpt" + (f"; first failure: {failures[0]}" if failures else "")
        )
    if only is None:
        return VersionPool(
            excerpts=[excerpts[i] for i in kept],
            waves=np.stack([made[i][0] for i in kept]),
            targets=np.asarray([made[i][1] for i in kept], dtype=np.float32),
            chains=[made[i][2] for i in kept],
            failures=failures,
            draw=draw,
        )
    shape = made[kept[0]][0].shape
    waves = np.zeros((len(excerpts), *shape), dtype=np.float16)
    targets = np.full((len(excerpts), shape[0]), np.nan, dtype=np.float32)
    chains: list[list[list[dict]]] = [[] for _ in excerpts]
    for i in kept:
        waves[i], targets[i], chains[i] = made[i][0], made[i][1], made[i][2]
    mask = np.zeros(len(excerpts), dtype=bool)
    mask[kept] = True
    return VersionPool(list(excerpts), waves, targets, chains, failures, draw, mask)


__all__ = ["CodecError", "VersionPool", "build_version_pool", "degrade_task", "run_tasks"]

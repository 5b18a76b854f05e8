"""Building the embedded corpus: plan, render in parallel, degrade, caption, write.

The build is a deterministic function of its ``CorpusConfig``: the same seed gives the
same pieces, arrangements, degradations, captions and bit-identical files, whatever the
number of workers. Pieces are drawn in a fixed order; each becomes one task rendered in a
worker process; tasks are consumed in order until the requested number of clips is
written. Clips are appended to ``manifest.partial.jsonl`` as they are written, so a killed
build resumes where it stopped; the final ``manifest.jsonl`` is written atomically.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.audio_io import save_audio
from qamdt.audio_spec import get_audio_spec
from qamdt.config import ConfigBase
from qamdt.corpus.arrangement import choose_arrangement, estimate_key, excerpt_notes, write_midi
from qamdt.corpus.captions import CaptionSettings, clip_tags, original_caption, true_caption
from qamdt.corpus.degrade import DegradationSettings, degrade_clip, reference_quality
from qamdt.corpus.render import find_fluidsynth, find_soundfont, render_midi
from qamdt.corpus.sources import SOURCES, list_pieces, load_piece_cached
from qamdt.errors import ConfigError, QamdtError
from qamdt.json_files import write_json
from qamdt.manifest import ClipRecord, ManifestAppender, read_manifest, write_manifest

MANIFEST_NAME = "manifest.jsonl"
PARTIAL_NAME = "manifest.partial.jsonl"
INFO_NAME = "corpus.json"
FAILURES_NAME = "failures.jsonl"
SPLITS = ("train", "valid", "test")
# A build stops when this many pieces in a row yield nothing (a broken soundfont, say),
# instead of drawing pieces for ever.
MAX_FRUITLESS_TASKS = 25
# Splits are assigned per piece in blocks of ten so every ten pieces hold all three.
_SPLIT_BLOCK = ("train",) * 8 + ("valid", "test")


@dataclasses.dataclass(frozen=True)
class CorpusConfig(ConfigBase):
    """Everything that determines a corpus build (stored in ``corpus.json``, compared on resume).

    Attributes:
        clips: Number of clips to write.
        seed: Master seed.
        preset: Audio preset (sample rate and clip length).
        variants_per_piece: Renderings of each piece (ensemble, tempo, key, excerpt vary).
        max_clips_per_variant: Most consecutive clips cut from one rendering.
        source_weights: Relative share of pieces from each score source.
        degradation: Degradation rates and severities.
        captions: Rates of each kind of weak original caption.
        audio_format: "wav" (16-bit PCM) or "flac".
    """

    clips: int
    seed: int = 0
    preset: str = "embedded"
    variants_per_piece: int = 2
    max_clips_per_variant: int = 3
    source_weights: tuple[tuple[str, float], ...] = tuple(
        (name, source.weight) for name, source in SOURCES.items()
    )
    degradation: DegradationSettings = DegradationSettings()
    captions: CaptionSettings = CaptionSettings()
    audio_format: str = "wav"

    config_where = "corpus config"

    def __post_init__(self):
        if self.clips <= 0:
            raise ConfigError(f"clips must be > 0, got {self.clips}")
        if self.variants_per_piece <= 0 or self.max_clips_per_variant <= 0:
            raise ConfigError("variants_per_piece and max_clips_per_variant must be > 0")
        get_audio_spec(self.preset)
        unknown = sorted({name for name, _ in self.source_weights} - set(SOURCES))
        if unknown:
            raise ConfigError(f"unknown score source(s) {unknown}; known: {sorted(SOURCES)}")
        if self.audio_format not in ("wav", "flac"):
            raise ConfigError(f"audio_format must be 'wav' or 'flac', got {self.audio_format!r}")

    @classmethod
    def prepare(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """``source_weights`` may map source names to weights (as ``configs/corpus.yaml``)."""
        weights = values.get("source_weights")
        if weights is not None:
            if isinstance(weights, dict):
                weights = weights.items()
            values["source_weights"] = tuple((str(k), float(v)) for k, v in weights)
        return values


def load_corpus_config(path: str | os.PathLike, **overrides: Any) -> CorpusConfig:
    """Reads a YAML corpus config; keyword overrides (not None) replace its values."""
    return CorpusConfig.from_yaml(path, **overrides)


@dataclasses.dataclass(frozen=True)
class Task:
    """One piece to render: position in the plan, score, split and variant numbers."""

    index: int
    source: str
    path: str
    split: str
    first_variant: int


def _slug(path: str) -> str:
    stem = Path(path).with_suffix("").as_posix().split("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.]+", "-", stem).strip("-").lower()


def plan_tasks(config: CorpusConfig) -> Iterator[Task]:
    """The endless, deterministic sequence of pieces a build draws from.

    Sources are drawn by weight; within a source the pieces come in a seeded shuffled
    order, and when a source is used up it starts over with new variant numbers. Each
    piece keeps one split for the whole plan, so no piece crosses splits.
    """
    rng = np.random.default_rng([config.seed, 1])
    names = [name for name, weight in config.source_weights if weight > 0]
    weights = np.array([w for _, w in config.source_weights if w > 0], dtype=np.float64)
    orders = {name: rng.permutation(len(list_pieces(name))) for name in names}
    cursor = dict.fromkeys(names, 0)
    split_of: dict[str, str] = {}
    block: list[str] = []
    index = 0
    while True:
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        pieces = list_pieces(name)
        position = cursor[name]
        cursor[name] += 1
        path = pieces[int(orders[name][position % len(pieces)])]
        if path not in split_of:
            if not block:
                block = list(rng.permutation(_SPLIT_BLOCK))
            split_of[path] = str(block.pop())
        lap = position // len(pieces)
        yield Task(index, name, path, split_of[path], lap * config.variants_per_piece)
        index += 1


@dataclasses.dataclass
class RenderedClip:
    """A finished clip: its manifest fields (without the audio path) and its samples."""

    fields: dict[str, Any]
    audio: np.ndarray


@dataclasses.dataclass
class TaskResult:
    """What one task produced: clips, or the reason it failed."""

    task: Task
    clips: list[RenderedClip]
    error: str | None = None


_WORKER: dict[str, Any] = {}


def _init_worker(soundfont: str) -> None:
    _WORKER["soundfont"] = soundfont
    _WORKER["tmp"] = tempfile.mkdtemp(prefix="qamdt-render-")


def _is_mostly_silent(clip: np.ndarray, sr: int) -> bool:
    frame = max(1, sr // 10)
    usable = clip[: clip.size // frame * frame].reshape(-1, frame)
    rms = np.sqrt(np.mean(usable**2, axis=1))
    return bool(np.mean(rms < 1e-3 * (np.max(np.abs(clip)) + 1e-12)) > 0.3 or rms.max() < 1e-4)


def render_task(task: Task, config: CorpusConfig) -> TaskResult:
    """Renders every variant of one piece and cuts, degrades and captions its clips.

    Runs in a worker process. A failure is returned, not raised, so the build records it
    and goes on.
    """
    if "tmp" not in _WORKER:
        _init_worker(str(find_soundfont()))
    spec = get_audio_spec(config.preset)
    try:
        piece = load_piece_cached(task.source, task.path)
    except Exception as error:  # a score music21 cannot read is recorded, not fatal
        return TaskResult(task, [], f"{task.path}: {type(error).__name__}: {error}")
    clips = []
    for offset in range(config.variants_per_piece):
        variant = task.first_variant + offset
        rng = np.random.default_rng([config.seed, task.index, offset, 1])
        arrangement, num_clips = choose_arrangement(
            piece, rng, spec.clip_seconds, config.max_clips_per_variant
        )
        notes = excerpt_notes(piece, arrangement)
        if not any(notes):
            continue
        if piece.declared_key is not None:
            key = ((piece.declared_key[0] + arrangement.transpose) % 12, piece.declared_key[1])
        else:
            key = estimate_key(notes)
        midi_path = Path(_WORKER["tmp"]) / f"{task.index}-{offset}.mid"
        try:
            write_midi(midi_path, notes, arrangement, piece.bar_ql, rng)
            audio = render_midi(midi_path, spec.sample_rate, _WORKER["soundfont"], _WORKER["tmp"])
        except Exception as error:  # one failed rendering loses one variant, not the build
            return TaskResult(task, clips, f"{task.path} variant {variant}: {error}")
        finally:
            midi_path.unlink(missing_ok=True)
        tags = clip_tags(piece, arrangement, key)
        for k in range(num_clips):
            clip = audio[k * spec.clip_samples : (k + 1) * spec.clip_samples]
            if clip.size < spec.clip_samples or _is_mostly_silent(clip, spec.sample_rate):
                continue
            clip = clip - clip.mean()
            clip = 0.9 * clip / np.max(np.abs(clip))
            clip_rng = np.random.default_rng([config.seed, task.index, offset, k, 2])
            degraded, applied = degrade_clip(clip, spec.sample_rate, clip_rng, config.degradation)
            caption_rng = np.random.default_rng([config.seed, task.index, offset, k, 3])
            sentence = true_caption(tags, caption_rng)
            original, kind = original_caption(tags, sentence, caption_rng, config.captions)
            clip_id = f"{task.source}-{_slug(task.path)}-v{variant}-{k}"
            fields = {
                "id": clip_id,
                "split": task.split,
                "original_caption": original,
                "meta": {
                    "true_caption": sentence,
                    "caption_kind": kind,
                    "tags": tags,
                    "source": task.source,
                    "piece": task.path,
                    "title": piece.title,
                    "variant": variant,
                    "excerpt_start_s": round(
                        arrangement.start_ql * arrangement.seconds_per_ql + k * spec.clip_seconds,
                        3,
                    ),
                    "transpose": arrangement.transpose,
                    "degradations": applied,
                    "reference_quality": reference_quality(applied),
                    "task": task.index,
                },
            }
            clips.append(RenderedClip(fields, degraded.astype(np.float32)))
    for clip in clips:
        clip.fields["meta"]["task_clips"] = len(clips)
    return TaskResult(task, clips)


def _completed_tasks(records: list[ClipRecord]) -> set[int]:
    counts = collections.Counter(r.meta.get("task") for r in records)
    totals = {r.meta.get("task"): r.meta.get("task_clips") for r in records}
    return {task for task, count in counts.items() if count == totals[task]}


def _check_existing(out: Path, config: CorpusConfig, overwrite: bool) -> bool:
    """True when ``out`` already holds this exact corpus; raises when it holds another."""
    info_path = out / INFO_NAME
    stored = None
    if info_path.is_file():
        stored = json.loads(info_path.read_text()).get("config")
    partial_config = out / ".build-config.json"
    if stored is None and partial_config.is_file():
        stored = json.loads(partial_config.read_text())
    if stored is None or stored == config.to_dict():
        return stored is not None and (out / MANIFEST_NAME).is_file()
    if not overwrite:
        changed = sorted(k for k in stored if stored.get(k) != config.to_dict().get(k))
        raise QamdtError(
            f"{out} already holds a corpus built with other settings (differs in {changed}); "
            "pass --overwrite to replace it or choose another folder"
        )
    for name in ("audio", MANIFEST_NAME, PARTIAL_NAME, INFO_NAME, FAILURES_NAME):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    partial_config.unlink(missing_ok=True)
    return False


def build_corpus(
    out_dir: str | os.PathLike,
    config: CorpusConfig,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    soundfont: str | None = None,
) -> Path:
    """Builds (or resumes, or recognises as done) the embedded corpus in ``out_dir``.

    Args:
        out_dir: Output folder; gets ``audio/<split>/*.wav``, ``manifest.jsonl``,
            ``corpus.json`` and ``failures.jsonl``.
        config: Build settings.
        workers: Rendering processes (default: all cores).
        overwrite: Replace a corpus built with other settings.
        progress: Show a progress bar on stderr.
        soundfont: A ``.sf2`` file to use instead of the system's FluidR3_GM.

    Returns:
        Path of the manifest.

    Raises:
        QamdtError: If FluidSynth or the soundfont is missing, or ``out_dir`` holds a
            corpus with other settings and ``overwrite`` is False.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _check_existing(out, config, overwrite):
        return out / MANIFEST_NAME
    find_fluidsynth()
    soundfont_path = str(find_soundfont(soundfont))
    write_json(out / ".build-config.json", config.to_dict())
    spec = get_audio_spec(config.preset)
    workers = workers or os.cpu_count() or 1
    started = time.time()

    partial = out / PARTIAL_NAME
    previous = read_manifest(partial, allow_truncated_tail=True) if partial.is_file() else []
    done_tasks = _completed_tasks(previous)
    written = len(previous)
    failures = []

    bar = tqdm(total=config.clips, initial=min(written, config.clips), unit="clip",
               desc="corpus", disable=not progress, file=sys.stderr)  # fmt: skip
    plan = plan_tasks(config)
    pending: collections.deque = collections.deque()
    fruitless = 0
    with (
        ManifestAppender(partial) as appender,
        futures.ProcessPoolExecutor(workers, initializer=_init_worker,
                                    initargs=(soundfont_path,)) as pool,
    ):  # fmt: skip

        def submit_next() -> None:
            for task in plan:
                if task.index not in done_tasks:
                    pending.append(pool.submit(render_task, task, config))
                    return

        for _ in range(2 * workers + 2):
            submit_next()
        while written < config.clips and pending:
            result: TaskResult = pending.popleft().result()
            submit_next()
            if result.error:
                failures.append({"task": result.task.index, "piece": result.task.path,
                                 "error": result.error})  # fmt: skip
            fruitless = 0 if result.clips else fruitless + 1
            if fruitless >= MAX_FRUITLESS_TASKS:
                raise QamdtError(
                    f"{fruitless} pieces in a row gave no clip; the last error was: "
                    f"{failures[-1]['error'] if failures else 'none (all clips silent)'}"
                )
            for clip in result.clips:
                if written >= config.clips:
                    break
                fields = clip.fields
                if fields["id"] in appender:
                    continue
                relative = f"audio/{fields['split']}/{fields['id']}.{config.audio_format}"
                subtype = "PCM_16"
                save_audio(out / relative, clip.audio, spec.sample_rate, subtype=subtype)
                record = ClipRecord(
                    audio=relative,
                    duration=round(spec.clip_seconds, 6),
                    sample_rate=spec.sample_rate,
                    **fields,
                )
                appender.append(record)
                written += 1
                bar.update(1)
        for future in pending:
            future.cancel()
    bar.close()

    records = read_manifest(partial)[: config.clips]
    write_manifest(out / MANIFEST_NAME, records)
    summary = corpus_summary(records)
    info = {
        "config": config.to_dict(),
        "audio": spec.to_dict(),
        "summary": summary,
        "build_seconds": round(time.time() - started, 2),
        "workers": workers,
        "soundfont": Path(soundfont_path).name,
    }
    write_json(out / INFO_NAME, info)
    with open(out / FAILURES_NAME, "a", encoding="utf-8") as handle:
        for failure in failures:
            handle.write(json.dumps(failure) + "\n")
    partial.unlink(missing_ok=True)
    (out / ".build-config.json").unlink(missing_ok=True)
    return out / MANIFEST_NAME


def corpus_summary(records: list[ClipRecord]) -> dict[str, Any]:
    """Make-up of a corpus.

    Returns:
        Clips and pieces per split, sources, styles, ensembles, caption kinds,
        degradation counts and the reference-quality distribution (JSON-serialisable).
    """
    meta = [r.meta for r in records]
    qualities = np.array([m["reference_quality"] for m in meta], dtype=np.float64)
    pieces_per_split = {
        split: len({m["piece"] for r, m in zip(records, meta, strict=True) if r.split == split})
        for split in SPLITS
    }
    degradation_counts = collections.Counter(d["type"] for m in meta for d in m["degradations"])
    histogram, edges = np.histogram(qualities, bins=8, range=(1.0, 5.0))
    return {
        "clips": len(records),
        "hours": round(sum(r.duration or 0.0 for r in records) / 3600.0, 3),
        "clips_per_split": dict(collections.Counter(r.split for r in records)),
        "pieces_per_split": pieces_per_split,
        "sources": dict(collections.Counter(m["source"] for m in meta)),
        "styles": dict(collections.Counter(m["tags"]["style"] for m in meta)),
        "ensembles": dict(collections.Counter(m["tags"]["ensemble"] for m in meta)),
        "caption_kinds": dict(collections.Counter(m["caption_kind"] for m in meta)),
        "clean_clips": int(sum(1 for m in meta if not m["degradations"])),
        "degradations": dict(degradation_counts),
        "reference_quality": {
            "mean": round(float(qualities.mean()), 4) if qualities.size else None,
            "std": round(float(qualities.std()), 4) if qualities.size else None,
            "histogram": histogram.tolist(),
            "bin_edges": [round(e, 2) for e in edges.tolist()],
        },
    }

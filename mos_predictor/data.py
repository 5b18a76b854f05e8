"""Rated clips for MOS training and evaluation: loaders, system ids and a torch dataset.

Every source of ratings is turned into a list of :class:`RatedClip` (audio file, overall
quality ``mos``, optional text alignment ``ta`` and caption, system id and split):

- the embedded corpus manifest (:func:`load_corpus_ratings`), whose ``mos`` is the
  *simulated* reference quality of the corpus builder and whose ``ta`` is a *simulated*
  text-alignment target derived from the caption kind (:data:`CORPUS_TA_BY_CAPTION_KIND`);
- the MusicEval / AudioMOS 2025 track-1 layout (:func:`load_musiceval`);
- a plain ``path,mos[,caption]`` CSV (:func:`load_csv_ratings`).

:func:`load_ratings` dispatches on a ``"scheme:PATH"`` spec. :class:`RatedClipDataset`
decodes, normalises and crops the audio into fixed-length windows for a model.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamdt.audio_io import audio_info, crop_or_pad, load_audio, normalize_waveform
from qamdt.errors import AudioError, ConfigError, ManifestError
from qamdt.manifest import SPLITS, iter_manifest

#: Simulated text-alignment target of a corpus clip from its ``meta.caption_kind``. The
#: corpus has no listener ratings of text alignment; this only orders the kinds (the true
#: sentence aligns best, a bare tag list a little less, a caption of another clip worst)
#: so that text-aware models can be exercised. ``None``: no caption, no target.
CORPUS_TA_BY_CAPTION_KIND: dict[str, float | None] = {
    "sentence": 5.0,
    "tags": 4.0,
    "wrong": 1.0,
    "missing": None,
}

#: Name of the manifest inside a corpus folder.
CORPUS_MANIFEST_NAME = "manifest.jsonl"

#: Prefix of the AudioMOS 2025 track-1 file names (``audiomos2025-track1-S002_P044.wav``);
#: it is removed before the system and prompt ids are read from a name.
MUSICEVAL_PREFIX = "audiomos2025-track1-"

#: Prompt files looked for in a MusicEval root, in ``sets/`` and then in the root itself.
MUSICEVAL_PROMPT_FILES = ("prompt_info.txt", "demo_prompt_info.txt")

#: Default ``cache_limit_bytes`` of :class:`RatedClipDataset`: the decoded audio of all
#: clips (float32 at the dataset's rate) is cached when it is estimated to fit in this.
DEFAULT_CACHE_LIMIT_BYTES = 2 * 1024**3

_SPLIT_ALIASES = {"dev": "valid", "validation": "valid", "val": "valid"}
_MUSICEVAL_SPLITS = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev"}
_SCHEMES = ("corpus", "musiceval", "csv")
_SYSTEM_RULES = ("first_underscore", "parent", "meta:KEY", "regex:PATTERN", "field")


@dataclass
class RatedClip:
    """One rated audio clip.

    Attributes:
        id: Identifier, unique within its source.
        path: The audio file.
        mos: Overall quality score (MOS units, usually 1-5).
        ta: Text-alignment score, when the source has one.
        caption: The text the clip was generated from or described by, when known.
        system: Id of the system (generator, corpus source) that produced the clip.
        split: Split the clip belongs to (``"train"``, ``"valid"``/``"dev"``, ``"test"``).
        offset: Start of the clip in the file, in seconds.
        duration: Clip length in seconds, or None for the rest of the file.
        meta: Source-specific extra information.
    """

    id: str
    path: Path
    mos: float
    ta: float | None = None
    caption: str | None = None
    system: str | None = None
    split: str = "train"
    offset: float = 0.0
    duration: float | None = None
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _parse_score(text: str) -> float | None:
    """Return ``text`` as a finite float, or None when it is not one."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_text_lines(path: Path) -> list[str]:
    """Read a text file's lines (BOM and line endings removed)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return f.read().splitlines()


def _split_csv_line(line: str, delimiter: str = ",") -> list[str]:
    """Split one line with csv quoting rules, fields stripped."""
    row = next(csv.reader(io.StringIO(line), delimiter=delimiter, skipinitialspace=True), [])
    return [cell.strip() for cell in row]


def _line_of_id(path: Path, clip_id: str) -> int | None:
    """Find the 1-based line of a manifest that holds the row with id ``clip_id``."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if clip_id not in line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and obj.get("id") == clip_id:
                return lineno
    return None


def _degradation_types(meta: dict) -> set[str]:
    entries = meta.get("degradations") or []
    return {d["type"] for d in entries if isinstance(d, dict) and "type" in d}


def _check_degradation_names(names: Iterable[str], argument: str) -> set[str]:
    # Imported here: it pulls in scipy.signal, which loading ratings does not otherwise need.
    from qamdt.corpus.degrade import DEGRADATIONS

    if isinstance(names, str):
        names = [names]
    chosen = set(names)
    unknown = sorted(chosen - set(DEGRADATIONS))
    if unknown:
        raise ConfigError(
            f"{argument}: unknown degradation type(s) {unknown}; known: {sorted(DEGRADATIONS)}"
        )
    return chosen


def _corpus_splits(splits: str | Iterable[str] | None) -> set[str] | None:
    if splits is None:
        return None
    if isinstance(splits, str):
        splits = [splits]
    chosen = set()
    for name in splits:
        name = _SPLIT_ALIASES.get(name, name)
        if name not in SPLITS:
            raise ConfigError(f"splits: unknown corpus split {name!r}; use one of {list(SPLITS)}")
        chosen.add(name)
    return chosen


# --------------------------------------------------------------------------- corpus


def load_corpus_ratings(
    manifest: str | os.PathLike,
    splits: str | Iterable[str] | None = None,
    exclude_degradations: Iterable[str] = (),
    only_degradations: Iterable[str] | None = None,
) -> list[RatedClip]:
    """Read the rated clips of an embedded corpus manifest.

    ``mos`` is the row's ``meta.reference_quality`` (simulated by the corpus builder, not
    rated by listeners) and ``ta`` the simulated text-alignment target of its
    ``meta.caption_kind`` (:data:`CORPUS_TA_BY_CAPTION_KIND`; None when the kind is
    missing or unknown). The audio files are not opened here.

    Args:
        manifest: The ``manifest.jsonl``, or the corpus folder that holds it.
        splits: Keep only these splits (a name or names; ``"dev"`` means ``"valid"``);
            None keeps all.
        exclude_degradations: Drop every clip degraded by any of these types (to train
            without a kind of degradation and test on it).
        only_degradations: Keep only clips that are degraded (non-empty set of types) and
            only by types in this set; ``{"reverb"}`` keeps clips degraded by reverb alone.

    Returns:
        The clips in manifest order, with ``system = meta["source"]``.

    Raises:
        ManifestError: If the manifest is invalid, or a row has no finite
            ``meta.reference_quality`` (naming the line and id).
        ConfigError: On an unknown split or degradation type.
    """
    path = Path(manifest)
    if path.is_dir():
        path = path / CORPUS_MANIFEST_NAME
    if not path.is_file():
        raise ManifestError("manifest file not found", path=path)
    wanted_splits = _corpus_splits(splits)
    excluded = _check_degradation_names(exclude_degradations, "exclude_degradations")
    only = (
        None
        if only_degradations is None
        else _check_degradation_names(only_degradations, "only_degradations")
    )
    folder = path.parent
    clips = []
    for record in iter_manifest(path):
        meta = record.meta or {}
        mos = _finite_number(meta.get("reference_quality"))
        if mos is None:
            reason = (
                "has no meta.reference_quality"
                if "reference_quality" not in meta
                else f"meta.reference_quality is not a finite number: {meta['reference_quality']!r}"
            )
            raise ManifestError(
                f"clip {record.id!r} {reason}",
                path=path,
                line=_line_of_id(path, record.id),
                field="meta.reference_quality",
            )
        if wanted_splits is not None and record.split not in wanted_splits:
            continue
        kinds = _degradation_types(meta)
        if kinds & excluded:
            continue
        if only is not None and not (kinds and kinds <= only):
            continue
        clips.append(
            RatedClip(
                id=record.id,
                path=record.audio_path(folder),
                mos=mos,
                ta=CORPUS_TA_BY_CAPTION_KIND.get(meta.get("caption_kind")),
                caption=record.original_caption,
                system=meta.get("source"),
                split=record.split,
                offset=record.offset,
                duration=record.duration,
                meta=meta,
            )
        )
    return clips


# --------------------------------------------------------------------------- MusicEval


def _musiceval_name_parts(filename: str) -> tuple[str, str | None]:
    """``(system id, prompt id)`` of a MusicEval file name.

    The challenge prefix and the ``.wav`` suffix are removed; the system id is the first
    ``_``-separated field, the prompt id the second (None when there is none).
    """
    stem = filename[:-4] if filename.lower().endswith(".wav") else filename
    if stem.startswith(MUSICEVAL_PREFIX):
        stem = stem[len(MUSICEVAL_PREFIX) :]
    parts = stem.split("_")
    prompt = parts[1] if len(parts) > 1 and parts[1] else None
    return parts[0], prompt


def _read_prompt_file(path: Path) -> dict[str, str]:
    """Read ``id<TAB>text`` (or ``id,text``) lines; a header line is skipped.

    The separator is a tab when the line has one, else the first comma; text after it is
    kept whole, commas included. Lines without a separator are ignored.
    """
    prompts: dict[str, str] = {}
    first = True
    for line in _read_text_lines(path):
        if not line.strip():
            continue
        is_first, first = first, False
        delimiter = "\t" if "\t" in line else ","
        fields = _split_csv_line(line, delimiter)
        if len(fields) < 2:
            continue
        key = fields[0]
        text = fields[1] if len(fields) == 2 else line.split(delimiter, 1)[1].strip()
        if is_first and key.lower() in ("id", "prompt_id", "prompt", "filename", "name"):
            continue
        if key and text:
            prompts[key] = text
    return prompts


def _musiceval_prompts(root: Path) -> dict[str, str]:
    prompts: dict[str, str] = {}
    for name in MUSICEVAL_PROMPT_FILES:
        for folder in (root / "sets", root):
            candidate = folder / name
            if candidate.is_file():
                prompts.update(_read_prompt_file(candidate))
                break
    return prompts


def _musiceval_caption(prompts: dict[str, str], filename: str, prompt_id: str | None) -> str | None:
    # Demo prompt files key whole file names; the main one keys prompt ids.
    stem = filename[:-4] if filename.lower().endswith(".wav") else filename
    for key in (filename, stem + ".wav", stem, prompt_id):
        if key is not None and key in prompts:
            return prompts[key]
    return None


def _musiceval_list(root: Path, split: str, prompts: dict[str, str]) -> list[RatedClip]:
    list_file = root / "sets" / f"{split}_mos_list.txt"
    if not list_file.is_file():
        raise ManifestError(f"MusicEval {split} list file not found", path=list_file)
    wav_dir = root / "wav"
    clips: list[RatedClip] = []
    seen: dict[str, int] = {}
    first = True
    for lineno, line in enumerate(_read_text_lines(list_file), start=1):
        if not line.strip():
            continue
        is_first, first = first, False
        fields = _split_csv_line(line)
        if len(fields) != 3:
            raise ManifestError(
                f"expected 'filename,overall,textual', got {len(fields)} field(s): {line!r}",
                path=list_file,
                line=lineno,
            )
        filename, overall_text, textual_text = fields
        overall, textual = _parse_score(overall_text), _parse_score(textual_text)
        if is_first and overall is None and textual is None:
            continue  # header
        for name, text, value in (
            ("overall", overall_text, overall),
            ("textual", textual_text, textual),
        ):
            if value is None:
                raise ManifestError(
                    f"score is not a finite number: {text!r}",
                    path=list_file,
                    line=lineno,
                    field=name,
                )
        if not filename:
            raise ManifestError("empty file name", path=list_file, line=lineno, field="filename")
        wav_name = filename if filename.lower().endswith(".wav") else filename + ".wav"
        wav = wav_dir / wav_name
        if not wav.is_file():
            raise ManifestError(
                f"audio file {wav} not found", path=list_file, line=lineno, field="filename"
            )
        clip_id = wav_name[:-4]
        if clip_id in seen:
            raise ManifestError(
                f"duplicate entry {clip_id!r}, already on line {seen[clip_id]}",
                path=list_file,
                line=lineno,
                field="filename",
            )
        seen[clip_id] = lineno
        system, prompt_id = _musiceval_name_parts(wav_name)
        clips.append(
            RatedClip(
                id=clip_id,
                path=wav,
                mos=overall,
                ta=textual,
                caption=_musiceval_caption(prompts, wav_name, prompt_id),
                system=system,
                split=split,
                meta={"prompt_id": prompt_id, "list_file": str(list_file), "line": lineno},
            )
        )
    return clips


def load_musiceval(root: str | os.PathLike, split: str) -> list[RatedClip]:
    """Read a split of MusicEval (the AudioMOS 2025 track-1 data).

    Layout: ``root/wav/<filename>.wav`` and ``root/sets/{train,dev}_mos_list.txt`` with
    lines ``filename,overall,textual`` (the file name with or without ``.wav``; a header
    line is skipped). The system id is the first ``_``-separated field of the file name
    and the prompt id the second, after removing :data:`MUSICEVAL_PREFIX` and the suffix
    (``audiomos2025-track1-S002_P044.wav`` -> system ``S002``, prompt ``P044``).

    Captions are optional: they come from ``prompt_info.txt`` (prompt id -> text) and
    ``demo_prompt_info.txt`` (file name -> text), looked for in ``root/sets`` and then
    ``root``, with tab- or comma-separated ``id``/``text`` columns. A clip whose text is not
    found, or every clip when there is no prompt file, gets caption None.

    Args:
        root: The MusicEval folder.
        split: ``"train"`` or ``"dev"`` (``"valid"`` is taken as ``"dev"``).

    Returns:
        The clips of the list file in its order, ``mos`` = overall, ``ta`` = textual.

    Raises:
        ConfigError: On an unknown split or a missing root folder.
        ManifestError: On a missing list file, a malformed line, a non-numeric score, a
            duplicate entry or a missing wav (naming the list file and line).
    """
    root = Path(root)
    if split not in _MUSICEVAL_SPLITS:
        raise ConfigError(f"unknown MusicEval split {split!r}; use 'train' or 'dev'")
    if not root.is_dir():
        raise ConfigError(f"MusicEval folder {root} not found")
    return _musiceval_list(root, _MUSICEVAL_SPLITS[split], _musiceval_prompts(root))


# --------------------------------------------------------------------------- CSV


def load_csv_ratings(path: str | os.PathLike, split: str = "train") -> list[RatedClip]:
    """Read a CSV of ``path,mos[,caption]`` rows.

    The first line is taken as a header when its second field is not a number. Audio
    paths are relative to the CSV's folder (or absolute); a caption with unquoted commas
    is kept whole. The clip id is the path as written; the system is the audio file's
    parent folder name.

    Args:
        path: The CSV file.
        split: Split name given to every clip.

    Returns:
        The clips in file order.

    Raises:
        ManifestError: If the file is missing, or a row has too few fields, an empty path,
            a MOS that is not a finite number, a duplicate path or a missing audio file
            (naming the line and field).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError("CSV file not found", path=path)
    folder = path.parent
    clips: list[RatedClip] = []
    seen: dict[str, int] = {}
    first = True
    for lineno, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        fields = _split_csv_line(line)
        is_first, first = first, False
        if is_first and len(fields) >= 2 and _parse_score(fields[1]) is None:
            continue  # header
        if len(fields) < 2:
            raise ManifestError(
                f"expected 'path,mos[,caption]', got {line!r}", path=path, line=lineno
            )
        audio, mos_text = fields[0], fields[1]
        if not audio:
            raise ManifestError("empty audio path", path=path, line=lineno, field="path")
        mos = _parse_score(mos_text)
        if mos is None:
            raise ManifestError(
                f"not a finite number: {mos_text!r}", path=path, line=lineno, field="mos"
            )
        if audio in seen:
            raise ManifestError(
                f"duplicate path {audio!r}, already on line {seen[audio]}",
                path=path,
                line=lineno,
                field="path",
            )
        seen[audio] = lineno
        audio_path = folder / audio
        if not audio_path.is_file():
            raise ManifestError(
                f"audio file {audio_path} not found", path=path, line=lineno, field="path"
            )
        # More than three fields: an unquoted caption with commas, kept as written.
        if len(fields) > 3:
            caption = line.split(",", 2)[2].strip() or None
        else:
            caption = (fields[2] if len(fields) == 3 else "") or None
        clips.append(
            RatedClip(
                id=audio,
                path=audio_path,
                mos=mos,
                caption=caption,
                system=audio_path.parent.name,
                split=split,
                meta={"line": lineno},
            )
        )
    return clips


# --------------------------------------------------------------------------- dispatch


def _guess_scheme(path: Path) -> str | None:
    if path.suffix.lower() == ".jsonl":
        return "corpus"
    if path.suffix.lower() == ".csv":
        return "csv"
    if path.is_dir() and (path / "sets").is_dir():
        return "musiceval"
    if path.is_dir() and (path / CORPUS_MANIFEST_NAME).is_file():
        return "corpus"
    return None


def load_ratings(spec: str, split: str | None = None, **kw: Any) -> list[RatedClip]:
    """Load rated clips from a ``"scheme:PATH"`` spec.

    Schemes: ``corpus:`` (a manifest or corpus folder, :func:`load_corpus_ratings`),
    ``musiceval:`` (:func:`load_musiceval`) and ``csv:`` (:func:`load_csv_ratings`). A bare
    path is taken as a corpus when it ends in ``.jsonl`` or is a folder with a
    ``manifest.jsonl``, as a CSV when it ends in ``.csv``, and as MusicEval when it is a
    folder with ``sets/``.

    Args:
        spec: The spec.
        split: The split to load. Corpus: keep only this split (None: all). MusicEval:
            ``"train"`` or ``"dev"`` (None: both). CSV: the split given to every clip
            (None: ``"train"``).
        **kw: Further keyword arguments of the loader (e.g. ``exclude_degradations``).

    Returns:
        The clips.

    Raises:
        ConfigError: On an unknown scheme, a bare path of no known kind, or keyword
            arguments the loader does not take.
        ManifestError: As raised by the loaders.
    """
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_+-]*):(.*)", spec)
    # A one-letter "scheme" is a Windows drive, and an existing path is taken as a path.
    if match and len(match.group(1)) > 1 and not os.path.exists(spec):
        scheme, target = match.group(1).lower(), match.group(2)
        if scheme not in _SCHEMES:
            raise ConfigError(
                f"unknown ratings scheme {match.group(1)!r} in {spec!r}; "
                f"use one of {[s + ':PATH' for s in _SCHEMES]}"
            )
    else:
        target = spec
        scheme = _guess_scheme(Path(spec))
        if scheme is None:
            raise ConfigError(
                f"cannot tell what kind of ratings {spec!r} holds; write it as "
                f"{' | '.join(s + ':PATH' for s in _SCHEMES)}"
            )
    allowed = {"corpus": {"splits", "exclude_degradations", "only_degradations"}}.get(scheme, set())
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ConfigError(f"{scheme} ratings take no option(s) {unknown}")
    if scheme == "corpus":
        if split is not None:
            if kw.get("splits") is not None:
                raise ConfigError("give either split or splits, not both")
            kw["splits"] = [split]
        return load_corpus_ratings(target, **kw)
    if scheme == "csv":
        return load_csv_ratings(target, split="train" if split is None else split)
    if split is not None:
        return load_musiceval(target, split)
    root = Path(target)
    return [
        clip
        for name in ("train", "dev")
        if (root / "sets" / f"{name}_mos_list.txt").is_file()
        for clip in load_musiceval(root, name)
    ]


# --------------------------------------------------------------------------- system ids


def system_ids(clips: Sequence[RatedClip], rule: str) -> list[str]:
    """Derive a system id for each clip.

    Args:
        clips: The clips.
        rule: ``"first_underscore"`` (first ``_``-separated field of the file stem),
            ``"parent"`` (parent folder name), ``"meta:KEY"`` (``clip.meta[KEY]``),
            ``"regex:PATTERN"`` (first group of ``re.search(PATTERN, file name)``, or the
            whole match when the pattern has no group) or ``"field"`` (``clip.system``).

    Returns:
        One id (a string) per clip.

    Raises:
        ConfigError: On an unknown rule or an invalid pattern, or when the rule gives no
            id for a clip (naming the rule and the clip).
    """

    def missing(clip: RatedClip, why: str) -> ConfigError:
        return ConfigError(f"system rule {rule!r}: clip {clip.id!r} ({clip.path}) {why}")

    ids: list[str] = []
    if rule == "first_underscore":
        return [Path(c.path).stem.split("_")[0] for c in clips]
    if rule == "parent":
        return [Path(c.path).parent.name for c in clips]
    if rule == "field":
        for clip in clips:
            if clip.system is None:
                raise missing(clip, "has no system")
            ids.append(str(clip.system))
        return ids
    if rule.startswith("meta:") and len(rule) > 5:
        key = rule[5:]
        for clip in clips:
            if clip.meta.get(key) is None:
                raise missing(clip, f"has no meta key {key!r}")
            ids.append(str(clip.meta[key]))
        return ids
    if rule.startswith("regex:") and len(rule) > 6:
        try:
            pattern = re.compile(rule[6:])
        except re.error as exc:
            raise ConfigError(f"system rule {rule!r}: invalid regular expression ({exc})") from None
        for clip in clips:
            found = pattern.search(Path(clip.path).name)
            if found is None:
                raise missing(clip, "does not match")
            ids.append(found.group(1) if pattern.groups else found.group(0))
        return ids
    raise ConfigError(f"unknown system rule {rule!r}; use one of {list(_SYSTEM_RULES)}")


# --------------------------------------------------------------------------- dataset


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

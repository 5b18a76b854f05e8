"""Rated clips for MOS training and evaluation: the corpus loader, dispatch and system ids.

:func:`load_corpus_ratings` reads the embedded corpus manifest, whose ``mos`` is the
*simulated* reference quality of the corpus builder and whose ``ta`` is a *simulated*
text-alignment target derived from the caption kind (:data:`CORPUS_TA_BY_CAPTION_KIND`).
:func:`load_ratings` dispatches on a ``"scheme:PATH"`` spec to it or to the readers of
:mod:`mos_predictor.ratings` (MusicEval, CSV). :func:`system_ids` derives the system of each
clip. :class:`~mos_predictor.dataset.RatedClipDataset` turns clips into model input.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mos_predictor.ratings import RatedClip, load_csv_ratings, load_musiceval
from qamdt.errors import ConfigError, ManifestError
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

_SPLIT_ALIASES = {"dev": "valid", "validation": "valid", "val": "valid"}
_SCHEMES = ("corpus", "musiceval", "csv")
_SYSTEM_RULES = ("first_underscore", "parent", "meta:KEY", "regex:PATTERN", "field")


# --------------------------------------------------------------------------- helpers


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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

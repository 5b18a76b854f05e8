"""The music21 scores the embedded corpus draws from, and what is true about each.

Each ``ScoreSource`` names a family of files in the music21 corpus together with facts
that hold for every file of it (style, tradition, composer, form) and the performance
choices that suit it (ensembles, tempo range in beats per minute). ``load_piece`` parses
one file into plain note lists with its metre and key, so the rest of the pipeline never
touches music21 objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from functools import cache
from pathlib import Path

from qamdt.json_files import write_text_atomic

MAX_PARTS = 8


@dataclasses.dataclass(frozen=True)
class ScoreSource:
    """A family of corpus files that share style, tradition and performance practice.

    Attributes:
        name: Short identifier used in clip ids and manifests.
        folders: Corpus sub-folders to search.
        suffixes: File suffixes to keep.
        exclude: Regular expression of relative paths to skip.
        style: Style tag (baroque, renaissance, classical, folk, medieval).
        form: Default form word; ``form_from_title`` may refine it.
        tradition: How the caption describes the origin when there is no composer.
        composer: Composer written in captions, or None (taken from metadata or omitted).
        polyphonic: Whether the scores have several voices (ensembles) or one melody.
        bpm_range: Tempo range in beats per minute of the score's metre.
        weight: Relative share of pieces drawn from this source.
    """

    name: str
    folders: tuple[str, ...]
    suffixes: tuple[str, ...]
    style: str
    form: str
    tradition: str
    composer: str | None
    polyphonic: bool
    bpm_range: tuple[int, int]
    weight: float
    exclude: str | None = None


SOURCES: dict[str, ScoreSource] = {
    s.name: s
    for s in (
        ScoreSource(
            name="bach",
            folders=("bach",),
            suffixes=(".mxl",),
            style="baroque",
            form="chorale",
            tradition="German Lutheran",
            composer="Johann Sebastian Bach",
            polyphonic=True,
            bpm_range=(60, 100),
            weight=0.30,
        ),
        ScoreSource(
            name="palestrina",
            folders=("palestrina",),
            suffixes=(".krn",),
            style="renaissance",
            form="mass movement",
            tradition="Roman sacred polyphony",
            composer="Giovanni Pierluigi da Palestrina",
            polyphonic=True,
            bpm_range=(50, 84),
            weight=0.16,
        ),
        ScoreSource(
            name="monteverdi",
            folders=("monteverdi",),
            suffixes=(".mxl",),
            style="renaissance",
            form="madrigal",
            tradition="Italian secular polyphony",
            composer="Claudio Monteverdi",
            polyphonic=True,
            bpm_range=(56, 90),
            weight=0.08,
        ),
        ScoreSource(
            name="quartets",
            folders=("haydn", "mozart", "beethoven"),
            suffixes=(".mxl",),
            exclude=r"(opus13[23]\.mxl|k545)",
            style="classical",
            form="string quartet movement",
            tradition="Viennese classical",
            composer=None,
            polyphonic=True,
            bpm_range=(66, 144),
            weight=0.08,
        ),
        ScoreSource(
            name="fiddle",
            folders=("ryansMammoth",),
            suffixes=(".abc",),
            style="folk",
            form="dance tune",
            tradition="traditional Irish, Scottish and American",
            composer=None,
            polyphonic=False,
            bpm_range=(84, 132),
            weight=0.32,
        ),
        ScoreSource(
            name="trecento",
            folders=("trecento",),
            suffixes=(".xml",),
            style="medieval",
            form="polyphonic song",
            tradition="Italian trecento",
            composer=None,
            polyphonic=True,
            bpm_range=(60, 100),
            weight=0.06,
        ),
    )
}

# Dance forms named in the fiddle tunes' titles ("7th Regiment -- Reel").
_FIDDLE_FORMS = ("reel", "jig", "hornpipe", "strathspey", "clog", "fling", "polka", "waltz")
_MASS_PARTS = ("Kyrie", "Gloria", "Credo", "Sanctus", "Benedictus", "Agnus")
_COMPOSERS_BY_FOLDER = {
    "haydn": "Joseph Haydn",
    "mozart": "Wolfgang Amadeus Mozart",
    "beethoven": "Ludwig van Beethoven",
}


@dataclasses.dataclass
class Piece:
    """One score reduced to what rendering and captioning need.

    Attributes:
        source: Name of its ``ScoreSource``.
        path: Path relative to the music21 corpus root (POSIX).
        title: Title from the metadata or the file name.
        composer: Composer as written in captions, or None.
        form: Form word (e.g. "chorale", "reel", "Kyrie of a mass").
        parts: One list per part of ``(onset_ql, duration_ql, midi_pitch)`` tuples, in
            quarter lengths, sorted by onset; parts are ordered top voice first.
        length_ql: Length of the score in quarter lengths.
        meter: Time signature as "n/d".
        beat_ql: Length of one beat of that metre in quarter lengths.
        bar_ql: Length of one bar in quarter lengths.
        declared_key: ``(tonic pitch class, mode)`` where the file states a key with its
            mode (the ABC ``K:`` field of the folk tunes), else None; other keys are
            estimated per excerpt from the notes.
    """

    source: str
    path: str
    title: str
    composer: str | None
    form: str
    parts: list[list[tuple[float, float, int]]]
    length_ql: float
    meter: str
    beat_ql: float
    bar_ql: float
    declared_key: tuple[int, str] | None


def corpus_root() -> Path:
    """Folder of the corpus bundled with music21."""
    import music21

    return Path(music21.__file__).parent / "corpus"


@cache
def list_pieces(source_name: str) -> tuple[str, ...]:
    """Sorted corpus-relative paths of the files of a source."""
    source = SOURCES[source_name]
    root = corpus_root()
    exclude = re.compile(source.exclude) if source.exclude else None
    found = []
    for folder in source.folders:
        for path in (root / folder).rglob("*"):
            rel = path.relative_to(root).as_posix()
            if path.suffix not in source.suffixes or "choraleAnalyses" in rel:
                continue
            if exclude and exclude.search(rel):
                continue
            found.append(rel)
    return tuple(sorted(found))


def _form_for(source: ScoreSource, path: str, title: str) -> str:
    words = f"{Path(path).stem} {title}"
    if source.name == "fiddle":
        lowered = words.lower()
        return next((f for f in _FIDDLE_FORMS if f in lowered), source.form)
    if source.name in ("palestrina", "trecento"):
        part = next((p for p in _MASS_PARTS if p in words), None)
        return f"{part} of a mass" if part else source.form
    return source.form


def _composer_for(source: ScoreSource, path: str) -> str | None:
    if source.composer:
        return source.composer
    return _COMPOSERS_BY_FOLDER.get(path.split("/", 1)[0])


def _title_for(score, path: str) -> str:
    md = score.metadata
    title = (md.title if md is not None else None) or Path(path).stem
    return str(title).strip() or Path(path).stem


def piece_cache_dir() -> Path:
    """Where parsed pieces are kept (``$QAMDT_CACHE`` or ``~/.cache/qamdt``).

    The folder name carries the music21 version and a hash of this module, so a change to
    either the parser or the way pieces are read starts a fresh cache.
    """
    import music21

    root = os.environ.get("QAMDT_CACHE") or Path.home() / ".cache" / "qamdt"
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return Path(root) / f"pieces-music21-{music21.__version__}-{code}"


def load_piece_cached(source_name: str, path: str) -> Piece:
    """``load_piece`` through an on-disk JSON cache, since parsing a long score takes seconds.

    The cache is keyed by music21 version and file; a damaged entry is parsed again.
    """
    cache = piece_cache_dir() / source_name / (path.replace("/", "__") + ".json")
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            data["parts"] = [[tuple(note) for note in part] for part in data["parts"]]
            if data["declared_key"] is not None:
                data["declared_key"] = tuple(data["declared_key"])
            return Piece(**data)
        except (ValueError, TypeError, KeyError):
            pass
    piece = load_piece(source_name, path)
    write_text_atomic(cache, json.dumps(dataclasses.asdict(piece)))
    return piece


def load_piece(source_name: str, path: str) -> Piece:
    """Parses a corpus file into a ``Piece``.

    Args:
        source_name: Key of ``SOURCES``.
        path: Corpus-relative path from ``list_pieces``.

    Returns:
        The piece, with ties merged, grace notes and unpitched notes dropped, chords split
        into their notes.

    Raises:
        ValueError: If the score holds no pitched notes.
    """
    from music21 import converter, key, meter

    source = SOURCES[source_name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = converter.parse(str(corpus_root() / path))
    if hasattr(score, "scores"):  # an Opus: the fiddle files hold one tune each
        score = score.scores[0]
    raw_title = _title_for(score, path)
    title = re.sub(r"\s*--\s*.*$", "", raw_title).strip() or Path(path).stem

    parts = []
    for part in list(score.parts)[:MAX_PARTS]:
        notes = []
        # Ties merged on the flat stream: the same notes as on the part, without the
        # per-measure bookkeeping of removals.
        flat = part.flatten()
        flat.stripTies(inPlace=True)
        for element in flat.notes:
            duration = float(element.quarterLength)
            if duration <= 0:
                continue
            onset = float(element.offset)
            for pitch in getattr(element, "pitches", ()):
                notes.append((onset, duration, int(round(pitch.ps))))
        if notes:
            notes.sort()
            parts.append(notes)
    if not parts:
        raise ValueError(f"{path}: no pitched notes")
    parts.sort(key=lambda notes: -sum(p for _, _, p in notes) / len(notes))

    signatures = list(score.recurse().getElementsByClass(meter.TimeSignature))
    signature = signatures[0] if signatures else meter.TimeSignature("4/4")
    declared_key = None
    if path.endswith(".abc"):
        keys = [k for k in score.recurse().getElementsByClass(key.Key) if k.mode]
        if keys:
            declared_key = (int(keys[0].tonic.pitchClass), str(keys[0].mode))
    length = max(on + dur for notes in parts for on, dur, _ in notes)
    return Piece(
        source=source_name,
        path=path,
        title=title,
        composer=_composer_for(source, path),
        form=_form_for(source, path, raw_title),
        parts=parts,
        length_ql=float(length),
        meter=signature.ratioString,
        beat_ql=float(signature.beatDuration.quarterLength),
        bar_ql=float(signature.barDuration.quarterLength),
        declared_key=declared_key,
    )

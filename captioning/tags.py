"""The tag vocabulary of the embedded corpus and tag precision / recall / F1 of captions.

A clip's truth is its structured ``meta.tags``; any caption (a true sentence, a bare tag
list, a generated or LLM-merged sentence, wrong tags) is read back into the same tag
strings, ``"<field>:<value>"``, and the two sets are compared. The evaluated fields are
``FIELDS``:

* ``instrument`` (multi-label): the instrument names of ``INSTRUMENTS``. Family and
  ensemble words ("strings", "brass", "woodwinds", "string quartet") name no instrument
  and give no tag. A bare "saxophone"/"sax" gives none either: the corpus only has the
  four registers, and guessing one would be a made-up tag. "organ" and "pipe organ" are
  the church organ, "horn" the French horn, "guitar" the acoustic guitar, "mouth organ"
  the harmonica; electric guitars, organs and pianos, bass guitars, the English horn and
  "808 bass" are other instruments and give nothing.
* ``tempo``: slow / medium / fast. When the text states a tempo in BPM the class comes
  from the BPM through the corpus thresholds (``tempo_class``), because the number is
  more precise than any word beside it; otherwise Italian markings map to the class
  their BPM range falls in, and plain words ("slow", "moderate", "medium tempo",
  "fast", "quick", "up-tempo") to theirs.
* ``mode``: major / minor / other (church modes and the words "modal", "church mode").
* ``metre``: time signatures written ``n/d`` (d a power of two), "common time" (4/4),
  "cut time" and "alla breve" (2/2).
* ``style``: baroque, renaissance, classical, folk, medieval ("mediaeval", "trecento",
  "ars nova").

``tempo_word`` (the Italian marking: largo ... presto) is also available but not in
``FIELDS``: it is finer than the paper's tempo attribute and a caption that states only
the class should not be penalised for it. Pass ``fields=ALL_FIELDS`` to include it.

Matching is case-insensitive, on word boundaries, and leftmost-first, so "electric
guitar" is consumed as a whole before "guitar" could match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from qamdt.corpus.arrangement import tempo_class, tempo_word

FIELDS: tuple[str, ...] = ("instrument", "tempo", "mode", "metre", "style")
ALL_FIELDS: tuple[str, ...] = (*FIELDS, "tempo_word")

# Canonical instrument names in score order (woodwind, brass, keyboard, plucked, voices,
# strings); captions list instruments in this order.
INSTRUMENTS: tuple[str, ...] = (
    "flute",
    "recorder",
    "tin whistle",
    "oboe",
    "clarinet",
    "bassoon",
    "soprano saxophone",
    "alto saxophone",
    "tenor saxophone",
    "baritone saxophone",
    "harmonica",
    "trumpet",
    "french horn",
    "trombone",
    "tuba",
    "piano",
    "harpsichord",
    "church organ",
    "accordion",
    "acoustic guitar",
    "banjo",
    "choir",
    "violin",
    "fiddle",
    "viola",
    "cello",
    "double bass",
)
STYLES: tuple[str, ...] = ("baroque", "renaissance", "classical", "folk", "medieval")
TEMPO_CLASSES: tuple[str, ...] = ("slow", "medium", "fast")
TEMPO_WORDS: tuple[str, ...] = ("largo", "adagio", "andante", "moderato", "allegro", "presto")
MODES: tuple[str, ...] = ("major", "minor", "other")
CHURCH_MODES: tuple[str, ...] = (
    "ionian",
    "dorian",
    "phrygian",
    "lydian",
    "mixolydian",
    "aeolian",
    "locrian",
)

# Class of each Italian marking, read off the corpus's own BPM thresholds.
_TEMPO_WORD_CLASS: dict[str, str] = {}
for _bpm in range(20, 320):
    _TEMPO_WORD_CLASS.setdefault(tempo_word(_bpm), tempo_class(_bpm))

_PLURAL = r"(?:e?s)?"

# (pattern, instrument or None). None consumes the words without giving a tag.
_INSTRUMENT_PATTERNS: tuple[tuple[str, str | None], ...] = (
    (r"electric guitars?|distorted guitars?|bass guitars?|steel guitars?", None),
    (r"electric organs?|hammond organs?|electric pianos?|english horns?|808 bass", None),
    (r"mouth organs?|harmonicas?", "harmonica"),
    (r"(?:soprano) (?:saxophones?|sax(?:es)?)", "soprano saxophone"),
    (r"(?:alto) (?:saxophones?|sax(?:es)?)", "alto saxophone"),
    (r"(?:tenor) (?:saxophones?|sax(?:es)?)", "tenor saxophone"),
    (r"(?:baritone|bari) (?:saxophones?|sax(?:es)?)", "baritone saxophone"),
    (r"(?:church |pipe )?organs?", "church organ"),
    (r"(?:acoustic |classical |nylon[- ]string )?guitars?", "acoustic guitar"),
    (r"(?:french )?horns?", "french horn"),
    (r"double[- ]bass(?:es)?|contrabass(?:es)?|upright bass(?:es)?", "double bass"),
    (r"(?:tin|penny) whistles?", "tin whistle"),
    (r"violoncell(?:os?|i)|cell(?:os?|i)", "cello"),
    (r"pianofortes?|pianos?", "piano"),
    (r"choirs?", "choir"),
    *(
        (name + _PLURAL, name)
        for name in (
            "flute",
            "recorder",
            "oboe",
            "clarinet",
            "bassoon",
            "trumpet",
            "trombone",
            "tuba",
            "harpsichord",
            "accordion",
            "banjo",
            "violin",
            "fiddle",
            "viola",
        )
    ),
)

_TEMPO_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"largo|larghetto|lento|adagio|adagietto|slow(?:ly|er)?", "slow"),
    (r"andante|andantino|moderato|allegretto|moderate(?:ly)?", "medium"),
    (r"(?:medium|mid)[- ]?(?:tempo|paced?)", "medium"),
    (r"allegro|vivace|vivo|presto|prestissimo|fast(?:er)?|quick(?:ly)?|brisk", "fast"),
    (r"up[- ]?tempo", "fast"),
)

_STYLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"baroque", "baroque"),
    (r"renaissance", "renaissance"),
    (r"classical", "classical"),
    (r"folk(?:[- ]?songs?|[- ]?tunes?)?", "folk"),
    (r"medieval|mediaeval|trecento|ars nova", "medieval"),
)

_MODE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"major", "major"),
    (r"minor", "minor"),
    ("|".join(CHURCH_MODES) + r"|modal|church modes?", "other"),
)

_BPM_RE = re.compile(
    r"(?<![\d.])(\d{2,3}(?:\.\d+)?)\s*-?\s*(?:bpm|beats per minute|beats a minute)\b", re.I
)
_METRE_RE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})(?![\d/])")
_NAMED_METRES: tuple[tuple[str, str], ...] = (
    (r"common time", "4/4"),
    (r"cut time|alla breve", "2/2"),
)
_DENOMINATORS = {1, 2, 4, 8, 16, 32}


class _Matcher:
    """Leftmost-first matching of a list of (pattern, value) pairs on word boundaries."""

    def __init__(self, table: Iterable[tuple[str, str | None]]):
        table = list(table)
        self.table = [(re.compile(rf"(?:{p})", re.I), value) for p, value in table]
        joined = "|".join(f"(?:{p})" for p, _ in table)
        self.scan = re.compile(rf"(?<!\w)(?:{joined})(?!\w)", re.I)

    def values(self, text: str) -> list[str]:
        found = []
        for match in self.scan.finditer(text):
            for pattern, value in self.table:
                if pattern.fullmatch(match.group(0)):
                    if value is not None:
                        found.append(value)
                    break
        return found


_INSTRUMENTS = _Matcher(_INSTRUMENT_PATTERNS)
_TEMPOS = _Matcher(_TEMPO_PATTERNS)
_TEMPO_WORDS_M = _Matcher((w, w) for w in TEMPO_WORDS)
_STYLES = _Matcher(_STYLE_PATTERNS)
_MODES = _Matcher(_MODE_PATTERNS)
_METRES = _Matcher(_NAMED_METRES)


def tag_field(tag: str) -> str:
    """The field of a tag string (the part before the first ``:``)."""
    return tag.split(":", 1)[0]


def mode_class(mode: str) -> str:
    """``major``, ``minor`` or ``other`` (church modes and anything else)."""
    mode = str(mode).strip().lower()
    return mode if mode in ("major", "minor") else "other"


def _metre(numerator: str, denominator: str) -> str | None:
    num, den = int(numerator), int(denominator)
    if den not in _DENOMINATORS or not 1 <= num <= 16:
        return None
    return f"{num}/{den}"


def _check_fields(fields: Iterable[str] | None) -> tuple[str, ...]:
    chosen = FIELDS if fields is None else tuple(fields)
    unknown = sorted(set(chosen) - set(ALL_FIELDS))
    if unknown:
        raise ValueError(f"unknown tag field(s) {unknown}; known: {list(ALL_FIELDS)}")
    return chosen


def tags_from_meta(
    meta_tags: Mapping[str, object], fields: Iterable[str] | None = None
) -> set[str]:
    """The true tag set of a clip from its structured ``meta.tags``.

    Args:
        meta_tags: The corpus's tag dict (``instruments``, ``tempo_class``/``bpm``,
            ``tempo``, ``mode``, ``meter`` or ``metre``, ``style``). Missing or empty
            entries give no tag.
        fields: Fields to return; ``None`` means ``FIELDS``.

    Returns:
        Tags such as ``{"instrument:violin", "tempo:medium", "mode:minor", "metre:3/4",
        "style:baroque"}``.

    Raises:
        ValueError: On an unknown field name.
    """
    chosen = _check_fields(fields)
    tags: set[str] = set()
    if "instrument" in chosen:
        for name in meta_tags.get("instruments") or []:
            tags.add(f"instrument:{str(name).strip().lower()}")
    bpm = meta_tags.get("bpm")
    if "tempo" in chosen:
        if meta_tags.get("tempo_class"):
            tags.add(f"tempo:{str(meta_tags['tempo_class']).lower()}")
        elif bpm is not None:
            tags.add(f"tempo:{tempo_class(float(bpm))}")
    if "tempo_word" in chosen:
        if meta_tags.get("tempo"):
            tags.add(f"tempo_word:{str(meta_tags['tempo']).lower()}")
        elif bpm is not None:
            tags.add(f"tempo_word:{tempo_word(float(bpm))}")
    if "mode" in chosen and meta_tags.get("mode"):
        tags.add(f"mode:{mode_class(str(meta_tags['mode']))}")
    metre = meta_tags.get("meter") or meta_tags.get("metre")
    if "metre" in chosen and metre:
        match = _METRE_RE.search(str(metre))
        value = _metre(*match.groups()) if match else None
        tags.add(f"metre:{value or str(metre).strip().lower()}")
    if "style" in chosen and meta_tags.get("style"):
        tags.add(f"style:{str(meta_tags['style']).strip().lower()}")
    return tags


def tags_from_text(text: str | None, fields: Iterable[str] | None = None) -> set[str]:
    """The tags a caption states, in the form of :func:`tags_from_meta`.

    Args:
        text: Any caption; ``None`` or empty gives the empty set.
        fields: Fields to extract; ``None`` means ``FIELDS``.

    Returns:
        The tag set (several values per field when the text names several).

    Raises:
        ValueError: On an unknown field name.
    """
    chosen = _check_fields(fields)
    if not text:
        return set()
    text = str(text)
    tags: set[str] = set()
    bpms = [float(m.group(1)) for m in _BPM_RE.finditer(text)]
    if "instrument" in chosen:
        tags.update(f"instrument:{v}" for v in _INSTRUMENTS.values(text))
    if "tempo" in chosen:
        classes = [tempo_class(b) for b in bpms] if bpms else _TEMPOS.values(text)
        tags.update(f"tempo:{v}" for v in classes)
    if "tempo_word" in chosen:
        words = [tempo_word(b) for b in bpms] if bpms else _TEMPO_WORDS_M.values(text)
        tags.update(f"tempo_word:{v.lower()}" for v in words)
    if "mode" in chosen:
        tags.update(f"mode:{v}" for v in _MODES.values(text))
    if "metre" in chosen:
        for match in _METRE_RE.finditer(text):
            value = _metre(*match.groups())
            if value:
                tags.add(f"metre:{value}")
        tags.update(f"metre:{v}" for v in _METRES.values(text))
    if "style" in chosen:
        tags.update(f"style:{v}" for v in _STYLES.values(text))
    return tags


def _scores(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    # Nothing predicted and nothing true is perfect agreement; otherwise an empty
    # denominator gives 0 (sklearn's zero_division=0).
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def _counts(predicted: set[str], truth: set[str], fields: tuple[str, ...]) -> dict[str, list[int]]:
    counts = {field: [0, 0, 0] for field in fields}
    for tag in predicted | truth:
        field = tag_field(tag)
        if field not in counts:
            continue
        inside_p, inside_t = tag in predicted, tag in truth
        counts[field][0 if inside_p and inside_t else 1 if inside_p else 2] += 1
    return counts


def _as_tags(value: object, from_meta: bool) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return tags_from_text(value, ALL_FIELDS)
    if from_meta and isinstance(value, Mapping):
        return tags_from_meta(value, ALL_FIELDS)
    return {str(t) for t in value}


def _report(counts: dict[str, list[int]]) -> dict[str, dict[str, float | int]]:
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    out = {"overall": _scores(*total)}
    out.update({field: _scores(*c) for field, c in counts.items()})
    return out


def tag_f1(
    predicted: Iterable[str] | str | None,
    truth: Iterable[str] | Mapping[str, object],
    fields: Iterable[str] | None = None,
) -> dict[str, dict[str, float | int]]:
    """Micro precision, recall and F1 of one clip's predicted tags, overall and per field.

    Args:
        predicted: A tag set, or a caption (read with :func:`tags_from_text`); ``None``
            (a missing caption) is the empty prediction.
        truth: A tag set, or the clip's ``meta.tags`` dict.
        fields: Fields to score; ``None`` means ``FIELDS``. Tags of other fields are
            ignored on both sides.

    Returns:
        ``{"overall": {...}, "instrument": {...}, ...}``, each with ``precision``,
        ``recall``, ``f1`` and the counts ``tp``, ``fp``, ``fn``. An empty denominator
        gives 0, except that nothing predicted against nothing true scores 1.
    """
    chosen = _check_fields(fields)
    counts = _counts(_as_tags(predicted, False), _as_tags(truth, True), chosen)
    return _report(counts)


def corpus_tag_f1(
    pairs: Iterable[tuple[Iterable[str] | str | None, Iterable[str] | Mapping[str, object]]],
    fields: Iterable[str] | None = None,
) -> dict[str, object]:
    """Tag scores over many clips: counts summed over clips, then micro P/R/F1.

    Args:
        pairs: ``(predicted, truth)`` per clip, each as in :func:`tag_f1`.
        fields: Fields to score; ``None`` means ``FIELDS``.

    Returns:
        Like :func:`tag_f1`, plus ``clips`` (the number of pairs).
    """
    chosen = _check_fields(fields)
    total = {field: [0, 0, 0] for field in chosen}
    clips = 0
    for predicted, truth in pairs:
        clips += 1
        for field, c in _counts(_as_tags(predicted, False), _as_tags(truth, True), chosen).items():
            total[field] = [a + b for a, b in zip(total[field], c, strict=True)]
    return {**_report(total), "clips": clips}

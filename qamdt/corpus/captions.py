"""True captions from score metadata, and the weak "original captions" real datasets have.

The true caption and the structured tags of a clip come from what was actually rendered
(``Piece`` + ``Arrangement``), so they are right by construction. The original caption a
row carries is then, at set rates, that sentence, a bare comma-joined tag list, missing,
or wrong tags, the way scraped music datasets are; the truth stays in the row's metadata.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qamdt.corpus.arrangement import (
    INSTRUMENT_FAMILIES,
    Arrangement,
    key_name,
    tempo_class,
    tempo_word,
)
from qamdt.corpus.sources import SOURCES, Piece

CAPTION_KINDS = ("sentence", "tags", "missing", "wrong")

# Tags that no clip of the corpus deserves: what mislabelled web audio says.
WRONG_TAGS: tuple[str, ...] = (
    "speech",
    "car",
    "dog barking",
    "rain",
    "applause",
    "crowd noise",
    "traffic",
    "male voice",
    "female singer",
    "rap vocals",
    "drum machine",
    "electric guitar",
    "distorted guitar",
    "synthesizer",
    "techno",
    "heavy metal",
    "hip hop",
    "siren",
    "birdsong",
    "engine",
    "laughter",
    "typing",
    "wind noise",
    "808 bass",
    "dubstep",
)


@dataclasses.dataclass(frozen=True)
class CaptionSettings:
    """Rates of each kind of original caption (they are normalised to sum to 1).

    Attributes:
        sentence: Share of clips whose original caption is the true sentence.
        tags: Share with a bare, partial, comma-joined list of true tags.
        missing: Share with no caption at all.
        wrong: Share with wrong tags (possibly mixed with one true tag).
    """

    sentence: float = 0.45
    tags: float = 0.25
    missing: float = 0.15
    wrong: float = 0.15

    def __post_init__(self):
        rates = dataclasses.astuple(self)
        if min(rates) < 0 or sum(rates) <= 0:
            raise ValueError("caption rates must be >= 0 and not all 0")

    def probabilities(self) -> np.ndarray:
        """Rates in ``CAPTION_KINDS`` order, normalised."""
        rates = np.array([getattr(self, kind) for kind in CAPTION_KINDS], dtype=np.float64)
        return rates / rates.sum()


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def clip_tags(piece: Piece, arrangement: Arrangement, key: tuple[int, str]) -> dict[str, object]:
    """Structured true tags of a clip.

    Returns:
        A JSON-serialisable dict with style, form, composer, tradition, ensemble,
        instruments, instrument families, tempo word and class, bpm, key, mode and metre.
    """
    source = SOURCES[piece.source]
    instruments = list(dict.fromkeys(arrangement.instruments))
    return {
        "style": source.style,
        "form": piece.form,
        "composer": piece.composer,
        "tradition": source.tradition,
        "ensemble": arrangement.ensemble,
        "instruments": instruments,
        "instrument_families": sorted({INSTRUMENT_FAMILIES[i] for i in instruments}),
        "tempo": tempo_word(arrangement.bpm),
        "tempo_class": tempo_class(arrangement.bpm),
        "bpm": arrangement.bpm,
        "key": key_name(*key),
        "mode": key[1],
        "meter": piece.meter,
    }


def tag_list(tags: dict[str, object]) -> list[str]:
    """The tags as the flat words a tagged dataset would list."""
    words = [tags["style"], tags["form"]]
    if tags["composer"]:
        words.append(tags["composer"])
    words.append(tags["ensemble"])
    words.extend(tags["instruments"])
    words.extend([tags["tempo"], f"{tags['bpm']} bpm", tags["key"], tags["meter"]])
    return [str(w).lower() for w in dict.fromkeys(words)]


def true_caption(tags: dict[str, object], rng: np.random.Generator) -> str:
    """One sentence stating every true tag, in one of several phrasings."""
    style, form, ensemble = tags["style"], tags["form"], tags["ensemble"]
    if tags["composer"]:
        origin = f"by {tags['composer']}"
    else:
        origin = f"from the {tags['tradition']} repertoire"
    instruments = tags["instruments"]
    if ensemble.startswith("solo") or " in unison" in ensemble or len(instruments) == 1:
        players = ensemble
    else:
        players = f"{ensemble} of {_join(instruments)}"
    tempo, bpm, key, meter = tags["tempo"], tags["bpm"], tags["key"], tags["meter"]
    templates = (
        f"{_article(style).capitalize()} {style} {form} {origin}, played by {_article(players)}"
        f" {players} at {_article(tempo)} {tempo} tempo of {bpm} BPM, in {key} and {meter} time.",
        f"{_article(players).capitalize()} {players} performs {_article(style)} {style} {form}"
        f" {origin}"
        f" in {key}, {meter} time, {tempo} at {bpm} BPM.",
        f"{tempo.capitalize()} {style} music in {key}: {_article(form)} {form} {origin} for"
        f" {'' if players.startswith('solo') else _article(players) + ' '}{players}, in {meter}"
        f" at about {bpm} BPM.",
    )
    return templates[int(rng.integers(len(templates)))]


def original_caption(
    tags: dict[str, object],
    sentence: str,
    rng: np.random.Generator,
    settings: CaptionSettings,
) -> tuple[str | None, str]:
    """Draws the weak original caption of a clip.

    Returns:
        ``(caption or None, kind)`` with ``kind`` one of ``CAPTION_KINDS``.
    """
    kind = CAPTION_KINDS[int(rng.choice(len(CAPTION_KINDS), p=settings.probabilities()))]
    if kind == "sentence":
        return sentence, kind
    if kind == "missing":
        return None, kind
    words = tag_list(tags)
    if kind == "tags":
        count = int(rng.integers(3, min(7, len(words)) + 1))
        chosen = [words[i] for i in sorted(rng.choice(len(words), size=count, replace=False))]
        return ", ".join(chosen), kind
    count = int(rng.integers(2, 5))
    chosen = [str(w) for w in rng.choice(WRONG_TAGS, size=count, replace=False)]
    if rng.random() < 0.5:
        chosen.insert(int(rng.integers(len(chosen) + 1)), words[int(rng.integers(len(words)))])
    return ", ".join(chosen), kind

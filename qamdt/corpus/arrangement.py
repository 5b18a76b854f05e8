"""Performance choices for a piece (ensemble, tempo, transposition, excerpt) and MIDI.

An ``Arrangement`` is drawn once per rendered variant from a seeded generator. Everything
a caption says about the audio (instruments, tempo, key, metre) is decided or measured
here, so captions are right by construction.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import mido
import numpy as np

from qamdt.corpus.sources import SOURCES, Piece

# General MIDI programs (0-based) of the instruments the corpus uses.
GM_PROGRAMS: dict[str, int] = {
    "piano": 0,
    "harpsichord": 6,
    "church organ": 19,
    "accordion": 21,
    "harmonica": 22,
    "acoustic guitar": 24,
    "violin": 40,
    "viola": 41,
    "cello": 42,
    "double bass": 43,
    "choir": 52,
    "trumpet": 56,
    "trombone": 57,
    "tuba": 58,
    "french horn": 60,
    "soprano saxophone": 64,
    "alto saxophone": 65,
    "tenor saxophone": 66,
    "baritone saxophone": 67,
    "oboe": 68,
    "bassoon": 70,
    "clarinet": 71,
    "flute": 73,
    "recorder": 74,
    "tin whistle": 78,
    "banjo": 105,
    "fiddle": 110,
}

# Instrument family of each instrument, for captions and tags.
INSTRUMENT_FAMILIES: dict[str, str] = {
    "piano": "keyboard",
    "harpsichord": "keyboard",
    "church organ": "keyboard",
    "accordion": "keyboard",
    "harmonica": "woodwind",
    "acoustic guitar": "plucked strings",
    "banjo": "plucked strings",
    "violin": "strings",
    "viola": "strings",
    "cello": "strings",
    "double bass": "strings",
    "fiddle": "strings",
    "choir": "voices",
    "trumpet": "brass",
    "trombone": "brass",
    "tuba": "brass",
    "french horn": "brass",
    "soprano saxophone": "woodwind",
    "alto saxophone": "woodwind",
    "tenor saxophone": "woodwind",
    "baritone saxophone": "woodwind",
    "oboe": "woodwind",
    "bassoon": "woodwind",
    "clarinet": "woodwind",
    "flute": "woodwind",
    "recorder": "woodwind",
    "tin whistle": "woodwind",
}


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Instruments that play a polyphonic score, top voice first.

    Attributes:
        name: Ensemble family word used in captions ("string", "brass", "pipe organ").
        slots: Instruments from the highest to the lowest voice; a score with a different
            number of parts is spread over them.
        sized: Whether captions add a size word ("string quartet") or not ("pipe organ").
        legato: Share of a written note's length that sounds.
    """

    name: str
    slots: tuple[str, ...]
    sized: bool = True
    legato: float = 0.95

    def instruments_for(self, num_parts: int) -> list[str]:
        """Instrument of each part, top voice first."""
        if num_parts == 1:
            return [self.slots[0]]
        last = len(self.slots) - 1
        return [self.slots[round(i * last / (num_parts - 1))] for i in range(num_parts)]

    def describe(self, num_parts: int) -> str:
        """Caption words for this ensemble playing ``num_parts`` voices."""
        if not self.sized:
            return self.name
        size = {2: "duo", 3: "trio", 4: "quartet", 5: "quintet", 6: "sextet"}
        return f"{self.name} {size.get(num_parts, 'ensemble')}"


POLYPHONIC_ENSEMBLES: tuple[Ensemble, ...] = (
    Ensemble("string", ("violin", "violin", "viola", "cello")),
    Ensemble("brass", ("trumpet", "trumpet", "french horn", "trombone", "tuba"), legato=0.9),
    Ensemble("woodwind", ("flute", "oboe", "clarinet", "bassoon"), legato=0.9),
    Ensemble(
        "saxophone",
        ("soprano saxophone", "alto saxophone", "tenor saxophone", "baritone saxophone"),
        legato=0.9,
    ),
    Ensemble("pipe organ", ("church organ",), sized=False, legato=0.98),
    Ensemble("solo piano", ("piano",), sized=False, legato=0.9),
    Ensemble("harpsichord", ("harpsichord",), sized=False, legato=0.9),
    Ensemble("wordless choir", ("choir",), sized=False, legato=0.98),
    Ensemble("recorder consort", ("recorder",), sized=False, legato=0.9),
)

MELODY_INSTRUMENTS: tuple[str, ...] = (
    "fiddle",
    "violin",
    "flute",
    "tin whistle",
    "accordion",
    "piano",
    "acoustic guitar",
    "banjo",
    "harmonica",
    "clarinet",
    "recorder",
)

# Krumhansl-Kessler key profiles (C major and C minor).
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_NAMES_MAJOR = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_NAMES_MINOR = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")


def key_name(tonic_pc: int, mode: str) -> str:
    """Conventional spelling of a key, e.g. ``key_name(10, "major") == "Bb major"``."""
    names = _NAMES_MINOR if mode in ("minor", "dorian", "phrygian") else _NAMES_MAJOR
    return f"{names[tonic_pc % 12]} {mode}"


def estimate_key(parts: list[list[tuple[float, float, int]]]) -> tuple[int, str]:
    """Krumhansl-Schmuckler key finding on a duration-weighted pitch-class histogram.

    Returns:
        ``(tonic pitch class, "major" | "minor")`` of the best-correlated key profile.
    """
    histogram = np.zeros(12)
    for notes in parts:
        for _, duration, pitch in notes:
            histogram[pitch % 12] += duration
    best = (-2.0, 0, "major")
    for mode, profile in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE)):
        for tonic in range(12):
            r = np.corrcoef(histogram, np.roll(profile, tonic))[0, 1]
            if np.isfinite(r) and r > best[0]:
                best = (float(r), tonic, mode)
    return best[1], best[2]


def tempo_word(bpm: float) -> str:
    """Italian tempo marking for a tempo in beats per minute."""
    for limit, word in ((60, "largo"), (76, "adagio"), (108, "andante"), (120, "moderato")):
        if bpm < limit:
            return word
    return "allegro" if bpm < 156 else "presto"


def tempo_class(bpm: float) -> str:
    """Coarse tempo class (slow, medium, fast) used as a tag."""
    return "slow" if bpm < 76 else "medium" if bpm < 120 else "fast"


@dataclasses.dataclass
class Arrangement:
    """How one variant of a piece is performed and which part of it is used.

    Attributes:
        ensemble: Caption words for the performers ("string quartet", "solo flute").
        instruments: Instrument of each part, top voice first.
        bpm: Beats per minute of the score's metre.
        quarter_bpm: The same tempo in quarter notes per minute (what MIDI stores).
        transpose: Semitones added to every pitch.
        start_ql: Where the excerpt starts in the score (quarter lengths, bar aligned).
        length_ql: Excerpt length in quarter lengths (after any repetition of short pieces).
        repeats: How many times a short piece is played through to fill the excerpt.
        dynamic: Base MIDI velocity.
        legato: Sounding share of each written note.
    """

    ensemble: str
    instruments: list[str]
    bpm: int
    quarter_bpm: float
    transpose: int
    start_ql: float
    length_ql: float
    repeats: int
    dynamic: int
    legato: float

    @property
    def seconds_per_ql(self) -> float:
        """Seconds per quarter length at this tempo."""
        return 60.0 / self.quarter_bpm


def choose_arrangement(
    piece: Piece, rng: np.random.Generator, clip_seconds: float, max_clips: int
) -> tuple[Arrangement, int]:
    """Draws ensemble, tempo, transposition and excerpt for one variant.

    Args:
        piece: The parsed score.
        rng: Generator seeded for this variant.
        clip_seconds: Length of one clip.
        max_clips: Most clips to cut from one variant.

    Returns:
        The arrangement and the number of whole clips its excerpt yields.
    """
    source = SOURCES[piece.source]
    num_parts = len(piece.parts)
    if source.polyphonic and num_parts > 1:
        ensemble = POLYPHONIC_ENSEMBLES[rng.integers(len(POLYPHONIC_ENSEMBLES))]
        instruments = ensemble.instruments_for(num_parts)
        ensemble_words = ensemble.describe(num_parts)
        legato = ensemble.legato
    else:
        first = str(rng.choice(MELODY_INSTRUMENTS))
        if rng.random() < 0.2:
            second = str(rng.choice([m for m in MELODY_INSTRUMENTS if m != first]))
            instruments = [first, second] if num_parts == 1 else [first] * num_parts
            ensemble_words = f"{first} and {second} in unison"
        else:
            instruments = [first] * num_parts
            ensemble_words = f"solo {first}"
        legato = 0.9
    low, high = source.bpm_range
    bpm = int(rng.integers(low, high + 1))
    transpose = int(rng.integers(-5, 7))
    arrangement = Arrangement(
        ensemble=ensemble_words,
        instruments=instruments,
        bpm=bpm,
        quarter_bpm=bpm * piece.beat_ql,
        transpose=transpose,
        start_ql=0.0,
        length_ql=piece.length_ql,
        repeats=1,
        dynamic=int(rng.choice([64, 80, 96])),
        legato=legato,
    )
    sec_per_ql = arrangement.seconds_per_ql
    piece_seconds = piece.length_ql * sec_per_ql
    if piece_seconds < clip_seconds:
        # Short tunes are played through again, as dance tunes are in practice.
        arrangement.repeats = math.ceil(clip_seconds / piece_seconds)
        arrangement.length_ql = piece.length_ql * arrangement.repeats
        return arrangement, 1
    num_clips = min(max_clips, int(piece_seconds // clip_seconds))
    needed_ql = num_clips * clip_seconds / sec_per_ql
    bar = piece.bar_ql if piece.bar_ql > 0 else piece.beat_ql
    latest_bar = int((piece.length_ql - needed_ql) // bar)
    start = float(rng.integers(0, latest_bar + 1)) * bar if latest_bar > 0 else 0.0
    arrangement.start_ql = start
    arrangement.length_ql = min(piece.length_ql - start, needed_ql + piece.bar_ql)
    return arrangement, num_clips


def excerpt_notes(piece: Piece, arrangement: Arrangement) -> list[list[tuple[float, float, int]]]:
    """Notes of the excerpt, transposed, shifted to start at 0 (quarter lengths)."""
    start, end = arrangement.start_ql, arrangement.start_ql + arrangement.length_ql
    out = []
    for notes in piece.parts:
        part = []
        for rep in range(arrangement.repeats):
            shift = rep * piece.length_ql
            for onset, duration, pitch in notes:
                onset += shift
                if onset < start or onset >= end:
                    continue
                duration = min(duration, end - onset)
                pitch = min(108, max(21, pitch + arrangement.transpose))
                part.append((onset - start, duration, pitch))
        out.append(part)
    return out


def write_midi(
    path: str | Path,
    parts: list[list[tuple[float, float, int]]],
    arrangement: Arrangement,
    bar_ql: float,
    rng: np.random.Generator,
) -> float:
    """Writes the excerpt as a type-1 MIDI file.

    Velocities follow the arrangement's dynamic with a small seeded spread and an accent on
    each bar's first beat.

    Returns:
        The excerpt's length in seconds.
    """
    ticks = 480
    midi = mido.MidiFile(type=1, ticks_per_beat=ticks)
    tempo = mido.MidiTrack()
    tempo.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(arrangement.quarter_bpm)))
    midi.tracks.append(tempo)
    channels = [c for c in range(16) if c != 9]
    voices = list(parts)
    instruments = list(arrangement.instruments)
    if len(instruments) > len(voices):  # a melody doubled in unison by a second instrument
        voices = voices * len(instruments)
    for index, (notes, instrument) in enumerate(zip(voices, instruments, strict=True)):
        channel = channels[index % len(channels)]
        events = []
        for onset, duration, pitch in notes:
            accent = 8 if bar_ql > 0 and abs(onset / bar_ql - round(onset / bar_ql)) < 1e-6 else 0
            velocity = int(np.clip(arrangement.dynamic + accent + rng.normal(0, 5), 20, 127))
            on = int(round(onset * ticks))
            off = max(on + 1, int(round((onset + duration * arrangement.legato) * ticks)))
            events.append((on, 1, pitch, velocity))
            events.append((off, 0, pitch, 0))
        events.sort()
        track = mido.MidiTrack()
        track.append(
            mido.Message("program_change", program=GM_PROGRAMS[instrument], channel=channel)
        )
        now = 0
        for tick, is_on, pitch, velocity in events:
            kind = "note_on" if is_on else "note_off"
            track.append(
                mido.Message(kind, note=pitch, velocity=velocity, channel=channel, time=tick - now)
            )
            now = tick
        midi.tracks.append(track)
    midi.save(str(path))
    return arrangement.length_ql * arrangement.seconds_per_ql

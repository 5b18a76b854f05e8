import mido
import numpy as np
import pytest

from qamdt.corpus.arrangement import (
    POLYPHONIC_ENSEMBLES,
    Arrangement,
    choose_arrangement,
    estimate_key,
    excerpt_notes,
    key_name,
    tempo_class,
    tempo_word,
    write_midi,
)
from qamdt.corpus.captions import (
    CAPTION_KINDS,
    WRONG_TAGS,
    CaptionSettings,
    clip_tags,
    original_caption,
    tag_list,
    true_caption,
)
from qamdt.corpus.sources import SOURCES, Piece, list_pieces, load_piece


def scale_piece(pitches, source="bach", length=None):
    notes = [(float(i), 1.0, p) for i, p in enumerate(pitches)]
    return Piece(
        source=source,
        path="bach/test.mxl",
        title="test",
        composer="Johann Sebastian Bach",
        form="chorale",
        parts=[notes, [(on, d, p - 12) for on, d, p in notes]],
        length_ql=length or float(len(pitches)),
        meter="4/4",
        beat_ql=1.0,
        bar_ql=4.0,
        declared_key=None,
    )


def test_key_estimate_on_scales():
    c_major = [60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60]
    assert estimate_key([[(i, 1.0, p) for i, p in enumerate(c_major)]]) == (0, "major")
    a_minor = [57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57, 57]
    assert estimate_key([[(i, 1.0, p) for i, p in enumerate(a_minor)]]) == (9, "minor")
    assert key_name(10, "major") == "Bb major" and key_name(1, "minor") == "C# minor"


def test_key_estimate_agrees_with_music21_on_chorales():
    from music21 import converter

    from qamdt.corpus.sources import corpus_root

    paths = list_pieces("bach")[:6]
    agree = 0
    for path in paths:
        piece = load_piece("bach", path)
        reference = converter.parse(str(corpus_root() / path)).analyze("key.krumhanslkessler")
        agree += estimate_key(piece.parts) == (reference.tonic.pitchClass, reference.mode)
    assert agree >= 5


def test_tempo_words():
    assert [tempo_word(b) for b in (50, 70, 90, 110, 130, 170)] == [
        "largo", "adagio", "andante", "moderato", "allegro", "presto"
    ]  # fmt: skip
    assert [tempo_class(b) for b in (70, 100, 130)] == ["slow", "medium", "fast"]


def test_ensembles_spread_over_voices():
    strings = POLYPHONIC_ENSEMBLES[0]
    assert strings.instruments_for(4) == ["violin", "violin", "viola", "cello"]
    assert strings.describe(4) == "string quartet"
    assert strings.instruments_for(2) == ["violin", "cello"]
    organ = next(e for e in POLYPHONIC_ENSEMBLES if e.name == "pipe organ")
    assert organ.describe(5) == "pipe organ"


def test_arrangement_excerpt_and_midi_round_trip(tmp_path):
    piece = scale_piece(list(range(60, 60 + 48)) * 2)
    rng = np.random.default_rng(0)
    arrangement, clips = choose_arrangement(piece, rng, clip_seconds=10.0, max_clips=2)
    assert clips == 2
    assert arrangement.start_ql % piece.bar_ql == 0
    notes = excerpt_notes(piece, arrangement)
    assert all(0 <= on < arrangement.length_ql for part in notes for on, _, _ in part)
    seconds = write_midi(tmp_path / "a.mid", notes, arrangement, piece.bar_ql, rng)
    assert seconds >= 2 * 10.0
    midi = mido.MidiFile(tmp_path / "a.mid")
    tempo = next(m.tempo for m in midi.tracks[0] if m.type == "set_tempo")
    assert mido.tempo2bpm(tempo) == pytest.approx(arrangement.quarter_bpm, rel=1e-4)
    note_ons = [m for t in midi.tracks for m in t if m.type == "note_on"]
    assert len(note_ons) == sum(len(p) for p in notes)
    pitches = sorted(m.note for m in note_ons)
    expected = sorted(p for part in notes for _, _, p in part)
    assert pitches == expected


def test_short_tunes_are_repeated_to_fill_a_clip():
    piece = scale_piece([60, 62, 64, 65], source="fiddle")
    arrangement, clips = choose_arrangement(piece, np.random.default_rng(1), 10.0, 3)
    assert clips == 1 and arrangement.repeats >= 2
    notes = excerpt_notes(piece, arrangement)
    assert len(notes[0]) == 4 * arrangement.repeats


def test_true_caption_states_every_tag():
    piece = scale_piece(list(range(60, 90)))
    arrangement = Arrangement(
        ensemble="string quartet",
        instruments=["violin", "violin", "viola", "cello"],
        bpm=92,
        quarter_bpm=92.0,
        transpose=0,
        start_ql=0.0,
        length_ql=30.0,
        repeats=1,
        dynamic=80,
        legato=0.95,
    )
    tags = clip_tags(piece, arrangement, (9, "minor"))
    assert tags["tempo"] == "andante" and tags["key"] == "A minor"
    assert tags["instrument_families"] == ["strings"]
    for seed in range(6):
        sentence = true_caption(tags, np.random.default_rng(seed))
        for word in ("92 BPM", "A minor", "4/4", "string quartet", "chorale", "Bach", "viola"):
            assert word.lower() in sentence.lower(), (word, sentence)


def test_original_caption_kinds_follow_their_rates():
    piece = scale_piece(list(range(60, 72)))
    arrangement = Arrangement("solo piano", ["piano"], 120, 120.0, 2, 0.0, 12.0, 1, 80, 0.9)
    tags = clip_tags(piece, arrangement, (2, "major"))
    settings = CaptionSettings()
    rng = np.random.default_rng(0)
    kinds = []
    for _ in range(2000):
        caption, kind = original_caption(tags, "true sentence", rng, settings)
        kinds.append(kind)
        if kind == "missing":
            assert caption is None
        elif kind == "sentence":
            assert caption == "true sentence"
        elif kind == "tags":
            assert set(caption.split(", ")) <= set(tag_list(tags))
        else:
            assert sum(t in WRONG_TAGS for t in caption.split(", ")) >= 2
    shares = {k: kinds.count(k) / len(kinds) for k in set(kinds)}
    for kind, expected in zip(CAPTION_KINDS, settings.probabilities(), strict=True):
        assert shares[kind] == pytest.approx(expected, abs=0.04)


def test_every_source_lists_pieces_and_parses():
    for name in SOURCES:
        paths = list_pieces(name)
        assert len(paths) > 20, name
    piece = load_piece("fiddle", next(p for p in list_pieces("fiddle") if "Jig" in p))
    assert piece.form == "jig" and piece.declared_key is not None and len(piece.parts) == 1

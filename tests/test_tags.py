import numpy as np
import pytest

from captioning.tags import (
    ALL_FIELDS,
    FIELDS,
    corpus_tag_f1,
    tag_f1,
    tags_from_meta,
    tags_from_text,
)
from qamdt.corpus.arrangement import tempo_class, tempo_word
from qamdt.corpus.captions import WRONG_TAGS, tag_list, true_caption


def _tags(**changes):
    base = {
        "style": "baroque",
        "form": "chorale",
        "composer": "Johann Sebastian Bach",
        "tradition": "German Lutheran",
        "ensemble": "string quartet",
        "instruments": ["violin", "viola", "cello"],
        "instrument_families": ["strings"],
        "tempo": "andante",
        "tempo_class": "medium",
        "bpm": 92,
        "key": "A minor",
        "mode": "minor",
        "meter": "3/4",
    }
    base.update(changes)
    return base


TAG_DICTS = [
    _tags(),
    _tags(
        style="folk",
        form="jig",
        composer=None,
        tradition="traditional Irish, Scottish and American",
        ensemble="solo tin whistle",
        instruments=["tin whistle"],
        tempo="allegro",
        tempo_class="fast",
        bpm=126,
        key="D dorian",
        mode="dorian",
        meter="6/8",
    ),
    _tags(
        style="folk",
        composer=None,
        tradition="traditional Irish, Scottish and American",
        ensemble="flute and acoustic guitar in unison",
        instruments=["flute", "acoustic guitar"],
        tempo="moderato",
        tempo_class="medium",
        bpm=110,
        key="G mixolydian",
        mode="mixolydian",
        meter="2/4",
    ),
    _tags(
        style="renaissance",
        form="Gloria of a mass",
        composer="Giovanni Pierluigi da Palestrina",
        ensemble="pipe organ",
        instruments=["church organ"],
        tempo="largo",
        tempo_class="slow",
        bpm=55,
        key="F major",
        mode="major",
        meter="4/2",
    ),
    _tags(
        style="medieval",
        composer=None,
        tradition="Italian trecento",
        ensemble="saxophone quartet",
        instruments=[
            "soprano saxophone",
            "alto saxophone",
            "tenor saxophone",
            "baritone saxophone",
        ],
        tempo="adagio",
        tempo_class="slow",
        bpm=70,
        key="Bb major",
        mode="major",
        meter="2/2",
    ),
    _tags(
        style="classical",
        composer=None,
        tradition="Viennese classical",
        ensemble="brass quintet",
        instruments=["trumpet", "french horn", "trombone", "tuba"],
        tempo="presto",
        tempo_class="fast",
        bpm=160,
        meter="9/8",
    ),
]


def test_meta_tags_are_normalised():
    assert tags_from_meta(TAG_DICTS[0]) == {
        "instrument:violin",
        "instrument:viola",
        "instrument:cello",
        "tempo:medium",
        "mode:minor",
        "metre:3/4",
        "style:baroque",
    }
    assert "mode:other" in tags_from_meta(TAG_DICTS[1])
    no_class = {"bpm": 130, "metre": "4/4", "instruments": []}
    assert tags_from_meta(no_class, ALL_FIELDS) == {
        "tempo:fast",
        "tempo_word:allegro",
        "metre:4/4",
    }
    assert tags_from_meta({}) == set()


@pytest.mark.parametrize("tags", TAG_DICTS)
def test_every_true_caption_template_reads_back_exactly(tags):
    templates_seen = set()
    for seed in range(40):
        caption = true_caption(tags, np.random.default_rng(seed))
        templates_seen.add(caption.split()[0])
        assert tags_from_text(caption) == tags_from_meta(tags), caption
        assert tags_from_text(caption, ALL_FIELDS) == tags_from_meta(tags, ALL_FIELDS)
    # The three phrasings start with an article, the players' article or the tempo word.
    assert len(templates_seen) >= 2


@pytest.mark.parametrize("tags", TAG_DICTS)
def test_full_tag_list_reads_back_exactly(tags):
    assert tags_from_text(", ".join(tag_list(tags))) == tags_from_meta(tags)


def test_partial_tag_list():
    assert tags_from_text("chorale, johann sebastian bach, string quartet, 3/4") == {"metre:3/4"}
    assert tags_from_text("baroque, violin, 92 bpm") == {
        "style:baroque",
        "instrument:violin",
        "tempo:medium",
    }


def test_wrong_tags_give_no_tag():
    assert tags_from_text(", ".join(WRONG_TAGS)) == set()
    for tag in WRONG_TAGS:
        assert tags_from_text(tag, ALL_FIELDS) == set(), tag


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two VIOLINS, a Viola and celli", {"violin", "viola", "cello"}),
        ("violoncello and double basses", {"cello", "double bass"}),
        ("strings, brass and woodwinds", set()),
        ("an organ", {"church organ"}),
        ("the pipe organ and a church organ", {"church organ"}),
        ("a mouth organ", {"harmonica"}),
        ("hammond organ, electric piano", set()),
        ("alto sax and Baritone Saxophones", {"alto saxophone", "baritone saxophone"}),
        ("a saxophone quartet", set()),
        ("guitar", {"acoustic guitar"}),
        ("electric guitar, bass guitar", set()),
        ("horns and an english horn", {"french horn"}),
        ("a hornpipe and a chorale", set()),
        ("wordless choir", {"choir"}),
        ("penny whistle and fiddles", {"tin whistle", "fiddle"}),
        ("recorder consort", {"recorder"}),
        ("solo piano, pianoforte", {"piano"}),
    ],
)
def test_instrument_words(text, expected):
    got = {t.split(":", 1)[1] for t in tags_from_text(text, ["instrument"])}
    assert got == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Allegro", {"tempo:fast"}),
        ("allegro at 100 BPM", {"tempo:medium"}),
        ("a slow piece", {"tempo:slow"}),
        ("moderate tempo", {"tempo:medium"}),
        ("at a medium tempo", {"tempo:medium"}),
        ("mid-tempo", {"tempo:medium"}),
        ("an up-tempo dance", {"tempo:fast"}),
        ("breakfast", set()),
        ("66 bpm", {"tempo:slow"}),
        ("Larghetto", {"tempo:slow"}),
    ],
)
def test_tempo_words(text, expected):
    assert tags_from_text(text, ["tempo"]) == expected


def test_italian_words_follow_the_corpus_thresholds():
    for bpm in range(30, 200):
        word, cls = tempo_word(bpm), tempo_class(bpm)
        assert tags_from_text(word, ALL_FIELDS) == {f"tempo:{cls}", f"tempo_word:{word}"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in A minor", {"mode:minor"}),
        ("Major key", {"mode:major"}),
        ("D Dorian", {"mode:other"}),
        ("G mixolydian", {"mode:other"}),
        ("a modal tune", {"mode:other"}),
        ("in 6/8 time", {"metre:6/8"}),
        ("common time", {"metre:4/4"}),
        ("alla breve", {"metre:2/2"}),
        ("on 12/08/2020, 3/5 of it", set()),
        ("Mediaeval", {"style:medieval"}),
        ("Italian trecento", {"style:medieval"}),
        ("BAROQUE and Renaissance", {"style:baroque", "style:renaissance"}),
        ("folk-song", {"style:folk"}),
    ],
)
def test_mode_metre_style_words(text, expected):
    assert tags_from_text(text, ["mode", "metre", "style"]) == expected


def test_empty_text():
    assert tags_from_text(None) == set()
    assert tags_from_text("") == set()


def test_tag_f1_by_hand():
    predicted = {"instrument:violin", "instrument:flute", "tempo:fast", "style:baroque"}
    truth = {"instrument:violin", "instrument:viola", "tempo:slow", "style:baroque", "mode:minor"}
    scores = tag_f1(predicted, truth)
    overall = scores["overall"]
    assert (overall["tp"], overall["fp"], overall["fn"]) == (2, 2, 3)
    assert overall["precision"] == pytest.approx(0.5)
    assert overall["recall"] == pytest.approx(0.4)
    assert overall["f1"] == pytest.approx(4 / 9)
    assert scores["instrument"]["f1"] == pytest.approx(0.5)
    assert scores["tempo"]["f1"] == 0.0
    assert scores["style"]["f1"] == 1.0
    assert scores["mode"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert scores["metre"]["f1"] == 1.0  # nothing predicted, nothing true
    assert set(scores) == {"overall", *FIELDS}


def test_tag_f1_accepts_captions_and_meta():
    caption = "A baroque piece for violin, allegro, in 3/4."
    scores = tag_f1(caption, TAG_DICTS[0], fields=["instrument", "style"])
    assert set(scores) == {"overall", "instrument", "style"}
    assert scores["overall"]["tp"] == 2 and scores["overall"]["fn"] == 2
    assert scores["overall"]["fp"] == 0
    missing = tag_f1(None, TAG_DICTS[0])
    assert missing["overall"]["f1"] == 0.0 and missing["overall"]["fn"] == 7
    with pytest.raises(ValueError, match="unknown tag field"):
        tag_f1(set(), set(), fields=["colour"])


def test_corpus_tag_f1_sums_counts():
    pairs = [
        ({"style:folk", "tempo:fast"}, {"style:folk", "tempo:slow"}),
        (None, {"style:baroque"}),
        ("A folk tune", {"style:folk"}),
    ]
    scores = corpus_tag_f1(pairs)
    assert scores["clips"] == 3
    assert (scores["overall"]["tp"], scores["overall"]["fp"], scores["overall"]["fn"]) == (2, 1, 2)
    assert scores["overall"]["f1"] == pytest.approx(4 / 7)
    assert scores["style"]["f1"] == pytest.approx(4 / 5)
    assert scores["tempo"]["f1"] == 0.0
    assert corpus_tag_f1([])["overall"]["f1"] == 1.0

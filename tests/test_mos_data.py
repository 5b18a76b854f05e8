import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mos_predictor.data import (
    CORPUS_TA_BY_CAPTION_KIND,
    load_corpus_ratings,
    load_ratings,
    system_ids,
)
from mos_predictor.dataset import RatedClipDataset, collate_rated, random_gain
from mos_predictor.ratings import RatedClip, load_csv_ratings, load_musiceval
from qamdt.errors import AudioError, ConfigError, ManifestError
from qamdt.manifest import ClipRecord, write_manifest


def write_wav(path, seconds=0.5, sr=16000, freq=440.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), sr)
    return path


def degr(*types):
    return [{"type": t, "severity": 0.5, "params": {}} for t in types]


# id, split, degradation types, caption kind, caption, quality
CORPUS_ROWS = [
    ("c0", "train", (), "sentence", "A calm piano piece.", 5.0),
    ("c1", "train", ("reverb",), "tags", "piano, calm", 3.5),
    ("c2", "valid", ("noise", "reverb"), "wrong", "A loud drum solo.", 2.0),
    ("c3", "test", ("noise",), "missing", None, 2.5),
    ("c4", "train", ("reverb", "reverb"), "sentence", "Strings.", 3.0),
]


@pytest.fixture
def corpus(tmp_path):
    records = []
    for cid, split, types, kind, caption, quality in CORPUS_ROWS:
        write_wav(tmp_path / "audio" / f"{cid}.wav", seconds=0.2)
        records.append(
            ClipRecord(
                id=cid,
                audio=f"audio/{cid}.wav",
                duration=0.2,
                split=split,
                original_caption=caption,
                meta={
                    "reference_quality": quality,
                    "degradations": degr(*types),
                    "caption_kind": kind,
                    "source": "bach" if cid in ("c0", "c1") else "mozart",
                },
            )
        )
    write_manifest(tmp_path / "manifest.jsonl", records)
    return tmp_path / "manifest.jsonl"


def ids(clips):
    return [c.id for c in clips]


def test_corpus_loader_fields_and_simulated_ta(corpus):
    clips = load_corpus_ratings(corpus)
    assert ids(clips) == ["c0", "c1", "c2", "c3", "c4"]
    c0, c1, c2, c3, _ = clips
    assert c0.path == corpus.parent / "audio" / "c0.wav" and c0.path.is_file()
    assert (c0.mos, c0.ta, c0.caption, c0.system, c0.split) == (
        5.0,
        5.0,
        "A calm piano piece.",
        "bach",
        "train",
    )
    assert c0.duration == pytest.approx(0.2) and c0.offset == 0.0
    assert c0.meta["caption_kind"] == "sentence"
    assert [c.ta for c in clips[:4]] == [5.0, 4.0, 1.0, None]
    assert CORPUS_TA_BY_CAPTION_KIND["missing"] is None
    assert c3.caption is None
    assert ids(load_corpus_ratings(corpus.parent)) == ids(clips)  # folder accepted


def test_corpus_split_and_degradation_filters(corpus):
    assert ids(load_corpus_ratings(corpus, splits=["train"])) == ["c0", "c1", "c4"]
    assert ids(load_corpus_ratings(corpus, splits="dev")) == ["c2"]
    assert ids(load_corpus_ratings(corpus, exclude_degradations=["reverb"])) == ["c0", "c3"]
    assert ids(load_corpus_ratings(corpus, only_degradations={"reverb"})) == ["c1", "c4"]
    assert ids(load_corpus_ratings(corpus, only_degradations={"reverb", "noise"})) == [
        "c1",
        "c2",
        "c3",
        "c4",
    ]
    both = load_corpus_ratings(
        corpus,
        splits=["train", "test"],
        exclude_degradations=["noise"],
        only_degradations=["reverb"],
    )
    assert ids(both) == ["c1", "c4"]
    with pytest.raises(ConfigError, match="reverbb"):
        load_corpus_ratings(corpus, exclude_degradations=["reverbb"])
    with pytest.raises(ConfigError, match="holdout"):
        load_corpus_ratings(corpus, splits=["holdout"])


def test_corpus_missing_reference_quality_names_line_and_id(tmp_path):
    rows = [
        {"id": "ok", "audio": "a.wav", "meta": {"reference_quality": 3.0}},
        {"id": "bad", "audio": "b.wav", "meta": {"caption_kind": "tags"}},
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ManifestError, match=r"line 2.*'bad'.*reference_quality") as info:
        load_corpus_ratings(path)
    assert info.value.line == 2


# --------------------------------------------------------------------------- MusicEval

PREFIX = "audiomos2025-track1-"


@pytest.fixture
def musiceval(tmp_path):
    root = tmp_path / "MusicEval"
    names = ["S001_P001", "S001_P002", "S002_P001", "S003_P002"]
    for i, name in enumerate(names):
        write_wav(root / "wav" / f"{PREFIX}{name}.wav", seconds=0.1, freq=200.0 + 100 * i)
    sets = root / "sets"
    sets.mkdir()
    (sets / "train_mos_list.txt").write_text(
        f"{PREFIX}S001_P001.wav,4.5,4.0\n"
        f"{PREFIX}S001_P002,3.25,2.5\n"  # without the suffix
        f"\n{PREFIX}S002_P001.wav,2.0,3.0\n"
    )
    (sets / "dev_mos_list.txt").write_text(
        f"filename,overall,textual\n{PREFIX}S003_P002.wav,1.5,1.0\n"
    )
    (root / "prompt_info.txt").write_text(
        "id\ttext\nP001\tA jazz trio, upbeat.\nP002\tSad cello.\n"
    )
    return root


def test_musiceval_loader(musiceval):
    train = load_musiceval(musiceval, "train")
    assert ids(train) == [f"{PREFIX}S001_P001", f"{PREFIX}S001_P002", f"{PREFIX}S002_P001"]
    first = train[0]
    assert first.path == musiceval / "wav" / f"{PREFIX}S001_P001.wav"
    assert (first.mos, first.ta, first.system, first.split) == (4.5, 4.0, "S001", "train")
    assert first.caption == "A jazz trio, upbeat."
    assert train[1].caption == "Sad cello." and train[1].meta["prompt_id"] == "P002"
    assert [c.system for c in train] == ["S001", "S001", "S002"]
    dev = load_musiceval(musiceval, "valid")  # header line skipped, "valid" means dev
    assert ids(dev) == [f"{PREFIX}S003_P002"] and dev[0].split == "dev"
    assert dev[0].mos == 1.5 and dev[0].ta == 1.0


def test_musiceval_without_prompts_and_comma_prompt_file(musiceval):
    (musiceval / "prompt_info.txt").unlink()
    assert all(c.caption is None for c in load_musiceval(musiceval, "train"))
    (musiceval / "sets" / "prompt_info.txt").write_text('P001,"Jazz, with brushes"\n')
    captions = [c.caption for c in load_musiceval(musiceval, "train")]
    assert captions == ["Jazz, with brushes", None, "Jazz, with brushes"]


def test_musiceval_errors_name_file_and_line(musiceval):
    listing = musiceval / "sets" / "train_mos_list.txt"
    text = listing.read_text()
    listing.write_text(text + f"{PREFIX}S001_P001.wav,4.0\n")
    with pytest.raises(ManifestError, match=r"train_mos_list\.txt, line 5") as info:
        load_musiceval(musiceval, "train")
    assert info.value.line == 5
    listing.write_text(text + f"{PREFIX}S001_P001.wav,good,4.0\n")
    with pytest.raises(ManifestError, match=r"line 5, field 'overall'.*'good'"):
        load_musiceval(musiceval, "train")
    listing.write_text(text + f"{PREFIX}S009_P001.wav,3,4\n")
    with pytest.raises(ManifestError, match=r"train_mos_list\.txt, line 5.*S009_P001\.wav"):
        load_musiceval(musiceval, "train")
    (musiceval / "sets" / "dev_mos_list.txt").unlink()
    with pytest.raises(ManifestError, match="dev_mos_list.txt"):
        load_musiceval(musiceval, "dev")
    with pytest.raises(ConfigError, match="nowhere"):
        load_musiceval(musiceval / "nowhere", "train")
    with pytest.raises(ConfigError, match="test"):
        load_musiceval(musiceval, "test")


# --------------------------------------------------------------------------- CSV


def make_csv(tmp_path, body):
    write_wav(tmp_path / "sysA" / "x.wav", seconds=0.1)
    write_wav(tmp_path / "sysB" / "y.wav", seconds=0.1)
    path = tmp_path / "ratings.csv"
    path.write_text(body)
    return path


@pytest.mark.parametrize("header", ["", "path,mos,caption\n"])
def test_csv_loader_with_and_without_header(tmp_path, header):
    path = make_csv(tmp_path, header + "sysA/x.wav,3.5,Soft piano, with strings\nsysB/y.wav, 2\n")
    clips = load_csv_ratings(path, split="valid")
    assert ids(clips) == ["sysA/x.wav", "sysB/y.wav"]
    assert clips[0].path == tmp_path / "sysA" / "x.wav"
    assert (clips[0].mos, clips[0].caption, clips[0].system) == (
        3.5,
        "Soft piano, with strings",
        "sysA",
    )
    assert (clips[1].mos, clips[1].caption, clips[1].system, clips[1].split) == (
        2.0,
        None,
        "sysB",
        "valid",
    )


def test_csv_errors_name_line_and_field(tmp_path):
    path = make_csv(tmp_path, "sysA/x.wav,3.5\nsysB/y.wav,excellent\n")
    with pytest.raises(ManifestError, match=r"ratings\.csv, line 2, field 'mos'.*excellent"):
        load_csv_ratings(path)
    path.write_text("sysA/x.wav,3\nsysA/missing.wav,4\n")
    with pytest.raises(ManifestError, match=r"line 2, field 'path'.*missing\.wav"):
        load_csv_ratings(path)
    path.write_text("sysA/x.wav,3\nsysA/x.wav,nan\n")
    with pytest.raises(ManifestError, match="line 2, field 'mos'"):
        load_csv_ratings(path)


# --------------------------------------------------------------------------- dispatch


def test_load_ratings_dispatch(corpus, musiceval, tmp_path):
    csv_path = make_csv(tmp_path, "sysA/x.wav,3.5\n")
    assert len(load_ratings(f"corpus:{corpus}")) == 5
    assert ids(load_ratings(str(corpus), split="train", exclude_degradations=["reverb"])) == ["c0"]
    assert len(load_ratings(f"musiceval:{musiceval}", split="train")) == 3
    assert len(load_ratings(str(musiceval))) == 4  # train + dev
    assert ids(load_ratings(f"csv:{csv_path}")) == ["sysA/x.wav"]
    assert load_ratings(str(csv_path), split="test")[0].split == "test"
    with pytest.raises(ConfigError, match="'dcase'"):
        load_ratings(f"dcase:{tmp_path}")
    with pytest.raises(ConfigError, match="cannot tell"):
        load_ratings(str(tmp_path / "ratings.txt"))
    with pytest.raises(ConfigError, match="only_degradations"):
        load_ratings(f"csv:{csv_path}", only_degradations=["noise"])


def test_system_ids(tmp_path):
    clips = [
        RatedClip("a", tmp_path / "gen1" / "S01_P3.wav", 3.0, system="x", meta={"model": "m1"}),
        RatedClip("b", tmp_path / "gen2" / "S02_P4.wav", 4.0, system="y", meta={"model": 7}),
    ]
    assert system_ids(clips, "first_underscore") == ["S01", "S02"]
    assert system_ids(clips, "parent") == ["gen1", "gen2"]
    assert system_ids(clips, "meta:model") == ["m1", "7"]
    assert system_ids(clips, "regex:_(P\\d)") == ["P3", "P4"]
    assert system_ids(clips, "field") == ["x", "y"]
    with pytest.raises(ConfigError, match="'meta:other'.*'a'"):
        system_ids(clips, "meta:other")
    with pytest.raises(ConfigError, match="'regex:Q.*'a'.*does not match"):
        system_ids(clips, "regex:Q(\\d)")
    with pytest.raises(ConfigError, match="'stem'"):
        system_ids(clips, "stem")


# --------------------------------------------------------------------------- dataset


@pytest.fixture
def clips(tmp_path):
    out = []
    for i, seconds in enumerate([0.5, 0.2]):
        path = write_wav(tmp_path / f"clip{i}.wav", seconds=seconds, freq=300.0 + 50 * i)
        out.append(
            RatedClip(
                f"clip{i}", path, mos=3.0 + i, ta=None if i else 4.0, caption="c" if i else None
            )
        )
    return out


def test_train_crops_seeded_and_change_with_epoch(clips):
    ds = RatedClipDataset(clips, 16000, 0.25, train=True, seed=3)
    again = RatedClipDataset(clips, 16000, 0.25, train=True, seed=3, cache=False)
    a = ds[0]["wave"]
    assert a.shape == (4000,) and a.dtype == torch.float32
    assert torch.equal(a, again[0]["wave"])
    assert torch.equal(a, ds[0]["wave"])  # cached path gives the same window
    ds.set_epoch(1)
    assert not torch.equal(a, ds[0]["wave"])
    other_seed = RatedClipDataset(clips, 16000, 0.25, train=True, seed=4)
    assert not torch.equal(a, other_seed[0]["wave"])


def test_eval_crops_center_and_padding(clips):
    ds = RatedClipDataset(clips, 16000, 0.25, train=False)
    first = ds[0]
    assert torch.equal(first["wave"], ds[0]["wave"])
    ds.set_epoch(5)
    assert torch.equal(first["wave"], ds[0]["wave"])
    full = torch.from_numpy(ds.load(0))
    assert torch.equal(first["wave"], full[2000:6000])  # centre of 8000 samples
    assert float(full.abs().max()) == pytest.approx(0.5, abs=1e-4)  # normalised
    short = ds[1]  # 0.2 s padded to 0.25 s
    assert short["wave"].shape == (4000,) and torch.all(short["wave"][3200:] == 0)
    assert (first["mos"], first["ta"], first["caption"], first["index"]) == (3.0, 4.0, "", 0)
    assert math.isnan(short["ta"]) and short["caption"] == "c"


def test_collate_shapes(clips):
    ds = RatedClipDataset(clips, 16000, 0.25, train=True)
    batch = collate_rated([ds[0], ds[1]])
    assert batch["wave"].shape == (2, 4000)
    assert batch["mos"].tolist() == [3.0, 4.0] and batch["mos"].dtype == torch.float32
    assert batch["ta"][0] == 4.0 and torch.isnan(batch["ta"][1])
    assert batch["caption"] == ["", "c"]
    assert batch["index"].tolist() == [0, 1] and batch["index"].dtype == torch.int64


def test_resampling_16k_to_22050(clips):
    ds = RatedClipDataset(clips, 22050, 0.1, train=False)
    assert ds.load(0).shape == (11025,)
    assert ds[0]["wave"].shape == (2205,)


def test_offset_duration_and_cache_decision(clips):
    clip = RatedClip("part", clips[0].path, 3.0, offset=0.1, duration=0.2)
    ds = RatedClipDataset([clip], 16000, 1.0, train=False)
    assert ds.load(0).shape == (3200,)
    assert ds.cache_enabled and ds.estimated_bytes() == 3200 * 4
    assert not RatedClipDataset(clips, 16000, 0.1, train=False, cache_limit_bytes=100).cache_enabled
    assert RatedClipDataset(clips, 16000, 0.1, train=False).estimated_bytes() == (8000 + 3200) * 4


def test_bad_audio_raises_audio_error_naming_file(tmp_path, clips):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all")
    ds = RatedClipDataset([clips[0], RatedClip("broken", bad, 3.0)], 16000, 0.1, train=True)
    ds[0]
    with pytest.raises(AudioError, match=r"broken\.wav.*clip 'broken'"):
        ds[1]
    gone = RatedClipDataset(
        [RatedClip("gone", tmp_path / "gone.wav", 3.0)], 16000, 0.1, train=False
    )
    with pytest.raises(AudioError, match=r"gone\.wav: file not found"):
        gone[0]


def test_random_gain_draws_one_gain_per_row_within_the_range():
    waves = torch.ones(400, 3)
    out = random_gain(waves, 10.0, torch.Generator().manual_seed(0))
    db = 20 * torch.log10(out[:, 0])
    assert torch.equal(out[:, 0], out[:, 2])
    assert float(db.min()) >= -10.0 - 1e-4 and float(db.max()) <= 10.0 + 1e-4
    assert float(db.min()) < -9 and float(db.max()) > 9 and abs(float(db.mean())) < 1.0
    again = random_gain(waves, 10.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert random_gain(waves, 0.0, torch.Generator()) is waves

import hashlib
import itertools
import json
import shutil

import numpy as np
import pytest

from qamdt.audio_io import load_audio
from qamdt.corpus import render
from qamdt.corpus.build import (
    INFO_NAME,
    MANIFEST_NAME,
    PARTIAL_NAME,
    CorpusConfig,
    build_corpus,
    plan_tasks,
)
from qamdt.errors import ConfigError, QamdtError
from qamdt.manifest import find_manifest_errors, read_manifest, write_manifest

CLIPS = 10


def checksums(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((folder / "audio").rglob("*.wav"))
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, CorpusConfig(clips=CLIPS, seed=3), workers=2, progress=False)
    return out


def test_build_writes_playable_clips_and_a_valid_manifest(corpus):
    manifest = corpus / MANIFEST_NAME
    assert find_manifest_errors(manifest) == []
    records = read_manifest(manifest)
    assert len(records) == CLIPS
    info = json.loads((corpus / INFO_NAME).read_text())
    spec = info["audio"]
    for record in records:
        wave, sr = load_audio(record.audio_path(corpus))
        assert sr == spec["sample_rate"] == record.sample_rate
        assert wave.size == spec["clip_frames"] * spec["hop_length"]
        assert record.duration == pytest.approx(wave.size / sr, abs=1e-5)
        assert 1.0 <= record.meta["reference_quality"] <= 5.0
        assert record.meta["true_caption"]
        assert not record.audio.startswith("/")
        assert record.audio.startswith(f"audio/{record.split}/")
    assert not (corpus / PARTIAL_NAME).exists()


def test_same_seed_gives_identical_files(corpus, tmp_path):
    build_corpus(tmp_path, CorpusConfig(clips=CLIPS, seed=3), workers=1, progress=False)
    assert checksums(tmp_path) == checksums(corpus)
    assert (tmp_path / MANIFEST_NAME).read_text() == (corpus / MANIFEST_NAME).read_text()


def test_second_run_is_a_no_op_and_other_settings_are_refused(corpus):
    before = (corpus / MANIFEST_NAME).stat().st_mtime_ns
    build_corpus(corpus, CorpusConfig(clips=CLIPS, seed=3), progress=False)
    assert (corpus / MANIFEST_NAME).stat().st_mtime_ns == before
    with pytest.raises(QamdtError, match=r"other settings.*seed"):
        build_corpus(corpus, CorpusConfig(clips=CLIPS, seed=4), progress=False)


def test_killed_build_resumes_to_the_same_corpus(corpus, tmp_path):
    records = read_manifest(corpus / MANIFEST_NAME)
    kept = records[:4]
    for record in kept:
        target = tmp_path / record.audio
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(record.audio_path(corpus), target)
    write_manifest(tmp_path / PARTIAL_NAME, kept)
    with open(tmp_path / PARTIAL_NAME, "a") as handle:
        handle.write('{"id": "half a line')  # what a kill mid-write leaves
    config = CorpusConfig(clips=CLIPS, seed=3)
    (tmp_path / ".build-config.json").write_text(json.dumps(config.to_dict()))
    with pytest.warns(UserWarning):
        build_corpus(tmp_path, config, workers=2, progress=False)
    assert (tmp_path / MANIFEST_NAME).read_text() == (corpus / MANIFEST_NAME).read_text()
    assert checksums(tmp_path) == checksums(corpus)


def test_splits_are_by_piece(corpus):
    plan = plan_tasks(CorpusConfig(clips=1000, seed=0))
    split_of = {}
    for task in itertools.islice(plan, 400):
        assert split_of.setdefault(task.path, task.split) == task.split
    first_ten = {t.split for t in itertools.islice(plan_tasks(CorpusConfig(clips=1, seed=5)), 10)}
    assert first_ten == {"train", "valid", "test"}
    records = read_manifest(corpus / MANIFEST_NAME)
    pieces = {}
    for record in records:
        assert pieces.setdefault(record.meta["piece"], record.split) == record.split


def test_plan_is_deterministic_and_seed_dependent():
    def first(seed):
        return [t.path for t in itertools.islice(plan_tasks(CorpusConfig(clips=1, seed=seed)), 30)]

    assert first(0) == first(0)
    assert first(0) != first(1)


def test_degradation_and_caption_records(corpus):
    records = read_manifest(corpus / MANIFEST_NAME)
    for record in records:
        applied = record.meta["degradations"]
        if not applied:
            assert record.meta["reference_quality"] == 5.0
        for item in applied:
            assert 0.1 <= item["severity"] <= 1.0 and item["params"]
        kind = record.meta["caption_kind"]
        if kind == "missing":
            assert record.original_caption is None
        if kind == "sentence":
            assert record.original_caption == record.meta["true_caption"]


def test_missing_fluidsynth_is_reported_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(QamdtError, match="apt-get install fluidsynth"):
        build_corpus(tmp_path, CorpusConfig(clips=1), progress=False)


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="clips"):
        CorpusConfig(clips=0)
    with pytest.raises(ConfigError, match="unknown score source"):
        CorpusConfig(clips=1, source_weights=(("bach", 1.0), ("beatles", 1.0)))
    with pytest.raises(ConfigError, match="audio preset"):
        CorpusConfig(clips=1, preset="cd-quality")


def test_describe_writes_tables_and_a_picture(corpus, tmp_path):
    from qamdt.corpus.describe import describe_corpus

    records = read_manifest(corpus / MANIFEST_NAME)
    if all(r.meta["degradations"] for r in records) or not any(
        r.meta["degradations"] for r in records
    ):
        pytest.skip("needs a clean and a degraded clip")
    markdown, picture = describe_corpus(corpus, tmp_path)
    text = markdown.read_text()
    assert "| train |" in text and "Degradations" in text
    assert picture.stat().st_size > 10_000
    assert np.frombuffer(picture.read_bytes()[:8], dtype=np.uint8).tolist()[:4] == [137, 80, 78, 71]


def test_shipped_config_matches_the_defaults():
    from pathlib import Path

    from qamdt.corpus.build import load_corpus_config

    path = Path(__file__).parent.parent / "configs" / "corpus.yaml"
    assert load_corpus_config(path) == CorpusConfig(clips=1000)
    assert load_corpus_config(path, clips=7, seed=None).clips == 7


def test_config_file_errors_name_the_key_and_file(tmp_path):
    from qamdt.corpus.build import load_corpus_config

    path = tmp_path / "c.yaml"
    path.write_text("clips: 5\nseeds: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown key.*seeds"):
        load_corpus_config(path)
    path.write_text("clips: 5\ndegradation:\n  clean_share: 0.5\n")
    with pytest.raises(ConfigError, match=r"degradation.*clean_share"):
        load_corpus_config(path)
    path.write_text("clips: 5\ndegradation:\n  clean_fraction: 1.5\n")
    with pytest.raises(ConfigError, match=r"clean_fraction"):
        load_corpus_config(path)


def test_piece_cache_round_trips(tmp_path, monkeypatch):
    from qamdt.corpus.sources import list_pieces, load_piece, load_piece_cached, piece_cache_dir

    monkeypatch.setenv("QAMDT_CACHE", str(tmp_path))
    path = list_pieces("bach")[0]
    first = load_piece_cached("bach", path)
    assert any(piece_cache_dir().rglob("*.json"))
    assert load_piece_cached("bach", path) == first == load_piece("bach", path)


def test_unreadable_scores_are_recorded_and_the_build_goes_on(monkeypatch, tmp_path):
    from qamdt.corpus import build

    real = build.load_piece_cached
    config = CorpusConfig(clips=4, seed=3)
    damaged = next(plan_tasks(config)).path

    def flaky(source, path):
        if path == damaged:
            raise ValueError("damaged score")
        return real(source, path)

    monkeypatch.setattr(build, "load_piece_cached", flaky)
    build_corpus(tmp_path, config, workers=1, progress=False)
    lines = (tmp_path / "failures.jsonl").read_text().splitlines()
    failures = [json.loads(line) for line in lines]
    assert [f["piece"] for f in failures] == [damaged]
    assert "damaged score" in failures[0]["error"]
    assert len(read_manifest(tmp_path / MANIFEST_NAME)) == 4


def test_a_build_where_nothing_renders_stops_with_the_reason(monkeypatch, tmp_path):
    from qamdt.corpus import build

    def broken(*args, **kwargs):
        raise render.RenderError("fluidsynth failed: bad soundfont")

    monkeypatch.setattr(build, "render_midi", broken)
    with pytest.raises(QamdtError, match="in a row gave no clip.*bad soundfont"):
        build_corpus(tmp_path, CorpusConfig(clips=2), workers=1, progress=False)

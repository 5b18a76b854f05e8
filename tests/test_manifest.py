import json
import math
import os
import shutil
import warnings
from pathlib import Path

import pytest

from qamdt.errors import ManifestError
from qamdt.manifest import (
    CAPTION_SOURCES,
    QUALITY_PREFIXES,
    SPLITS,
    ClipRecord,
    ManifestAppender,
    ManifestWarning,
    MergeStats,
    find_manifest_errors,
    format_summary,
    iter_manifest,
    merge_manifests,
    read_manifest,
    shard_records,
    summarize,
    write_manifest,
)


def rec(i, **kw):
    kw.setdefault("audio", f"audio/{i}.wav")
    return ClipRecord(id=f"clip{i}", **kw)


def full_record():
    return ClipRecord(
        id="full",
        audio="audio/full.wav",
        offset=1.5,
        duration=10.24,
        sample_rate=16000,
        split="valid",
        original_caption="a piano piece",
        generated_caption="soft solo piano, slow tempo",
        final_caption="a soft solo piano piece at a slow tempo",
        caption_source="merged",
        clap={"original_audio": 0.31, "generated_audio": 0.42, "original_generated": 0.55},
        pmos=3.75,
        quality_level=4,
        quality_prefix="high quality",
        errors={"caption": "timeout"},
        meta={"source": "MTG", "tags": ["piano", "calm"], "nested": {"x": 1}, "ü": "é"},
    )


def write_lines(path, lines, trailing_newline=True):
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    Path(path).write_text(text, encoding="utf-8")


def row(i, **kw):
    d = {"id": f"clip{i}", "audio": f"audio/{i}.wav"}
    d.update(kw)
    return json.dumps(d)


def make_audio(folder, names):
    for name in names:
        p = Path(folder) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"RIFF")


# --- records ---------------------------------------------------------------------------


def test_constants():
    assert SPLITS == ("train", "valid", "test")
    assert None in CAPTION_SOURCES and "merged" in CAPTION_SOURCES
    assert QUALITY_PREFIXES == (None, "low quality", "medium quality", "high quality")


def test_to_dict_has_all_fields_in_order():
    d = ClipRecord(id="a", audio="a.wav").to_dict()
    assert list(d) == [
        "id",
        "audio",
        "offset",
        "duration",
        "sample_rate",
        "split",
        "original_caption",
        "generated_caption",
        "final_caption",
        "caption_source",
        "clap",
        "pmos",
        "quality_level",
        "quality_prefix",
        "errors",
        "meta",
    ]
    assert d["duration"] is None and d["clap"] == {} and d["split"] == "train"


def test_from_dict_round_trip_and_normalises_ints():
    r = full_record()
    assert ClipRecord.from_dict(r.to_dict()) == r
    r2 = ClipRecord.from_dict({"id": "a", "audio": "a.wav", "offset": 0, "pmos": 4})
    assert isinstance(r2.offset, float) and isinstance(r2.pmos, float) and r2.pmos == 4.0


def test_replace():
    r = rec(1)
    r2 = r.replace(pmos=2.5)
    assert r2.pmos == 2.5 and r.pmos is None and r2.id == r.id


def test_validate_method():
    rec(1, quality_level=3).validate()
    with pytest.raises(ManifestError, match="quality_level"):
        rec(1, quality_level=0).validate()


# --- round trip and paths --------------------------------------------------------------


def test_write_read_round_trip(tmp_path):
    records = [full_record(), rec(1), rec(2, split="test", pmos=1.0)]
    path = tmp_path / "manifest.jsonl"
    assert write_manifest(path, records) == 3
    assert read_manifest(path) == records
    assert list(iter_manifest(path, validate=False)) == records
    # One object per line, all fields present.
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(len(json.loads(x)) == 16 for x in lines)


def test_absolute_paths_written_relative_and_resolved(tmp_path):
    data = tmp_path / "data"
    make_audio(data, ["audio/a.wav"])
    make_audio(tmp_path, ["beside/b.wav"])
    records = [
        ClipRecord(id="a", audio=str(data / "audio" / "a.wav")),
        ClipRecord(id="b", audio=str(tmp_path / "beside" / "b.wav")),
    ]
    path = data / "manifest.jsonl"
    write_manifest(path, records)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0]["audio"] == "audio/a.wav"
    assert rows[1]["audio"] == "../beside/b.wav"
    back = read_manifest(path)
    assert back[0].audio_path(data).is_file()
    assert back[1].audio_path(data).resolve() == (tmp_path / "beside" / "b.wav").resolve()


def test_absolute_path_read_and_resolved(tmp_path):
    make_audio(tmp_path, ["x.wav"])
    path = tmp_path / "m.jsonl"
    write_lines(path, [json.dumps({"id": "x", "audio": str(tmp_path / "x.wav")})])
    (r,) = read_manifest(path)
    assert r.audio_path("/somewhere/else") == tmp_path / "x.wav"


def test_moving_dataset_folder_keeps_paths(tmp_path):
    data = tmp_path / "data"
    make_audio(data, ["audio/0.wav", "audio/1.wav"])
    write_manifest(data / "manifest.jsonl", [rec(0), rec(1)])
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(data), str(moved))
    records = read_manifest(moved / "manifest.jsonl")
    for r in records:
        p = r.audio_path(moved)
        assert p.is_file() and moved in p.parents


def test_writing_into_another_folder_rebases(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b" / "deeper"
    b.mkdir(parents=True)
    make_audio(a, ["audio/0.wav"])
    write_manifest(a / "m.jsonl", [rec(0)])
    records = read_manifest(a / "m.jsonl")
    write_manifest(b / "m.jsonl", records, source_dir=a)
    (moved,) = read_manifest(b / "m.jsonl")
    assert moved.audio == "../../a/audio/0.wav"
    assert moved.audio_path(b).resolve() == (a / "audio" / "0.wav").resolve()
    assert moved.audio_path(b).is_file()


def test_write_keeps_permissions_of_existing_file(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [rec(0)])
    os.chmod(path, 0o640)
    write_manifest(path, [rec(1)])
    assert (os.stat(path).st_mode & 0o777) == 0o640


def test_write_can_stream_from_the_file_it_replaces(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [rec(i) for i in range(5)])
    write_manifest(path, (r.replace(pmos=float(i)) for i, r in enumerate(iter_manifest(path))))
    assert [r.pmos for r in read_manifest(path)] == [0.0, 1.0, 2.0, 3.0, 4.0]


# --- validation errors -----------------------------------------------------------------


def check_error(tmp_path, lines, line_no, field, *fragments):
    path = tmp_path / "manifest.jsonl"
    write_lines(path, lines)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"line {line_no}" in msg
    if field is not None:
        assert f"field '{field}'" in msg
        assert info.value.field == field
    for fragment in fragments:
        assert fragment in msg
    assert info.value.line == line_no
    # The collecting validator reports the same problem.
    found = find_manifest_errors(path)
    assert found and found[0].line == line_no
    return msg


def test_error_bad_json(tmp_path):
    check_error(tmp_path, [row(1), '{"id": "x", "audio": }'], 2, None, "invalid JSON")


def test_error_non_object(tmp_path):
    check_error(tmp_path, [row(1), row(2), "[1, 2]"], 3, None, "JSON object", "array")


def test_error_missing_id(tmp_path):
    check_error(tmp_path, [row(1), json.dumps({"audio": "a.wav"})], 2, "id", "missing")


def test_error_missing_both_required(tmp_path):
    check_error(tmp_path, [json.dumps({"pmos": 1.0})], 1, None, "'id'", "'audio'")


def test_error_empty_id(tmp_path):
    check_error(tmp_path, [row(1), json.dumps({"id": "", "audio": "a.wav"})], 2, "id", "empty")


def test_error_duplicate_id_names_both_lines(tmp_path):
    msg = check_error(tmp_path, [row(1), row(2), "", row(1)], 4, "id", "line 1", "clip1")
    assert "duplicate" in msg


def test_error_unknown_key_suggests_meta(tmp_path):
    msg = check_error(tmp_path, [row(1), row(2, p_mos=3.0)], 2, "p_mos", "meta")
    assert "did you mean 'pmos'" in msg


def test_error_wrong_type(tmp_path):
    check_error(tmp_path, [row(1, pmos="high")], 1, "pmos", "'high'")


def test_error_bool_quality_level(tmp_path):
    check_error(tmp_path, [row(1), row(2, quality_level=True)], 2, "quality_level", "true")


def test_error_bool_pmos(tmp_path):
    check_error(tmp_path, [row(1, pmos=False)], 1, "pmos")


def test_error_quality_level_out_of_range(tmp_path):
    msg = check_error(tmp_path, [row(i) for i in range(6)] + [row(7, quality_level=7)], 7, None)
    assert msg.endswith("line 7, field 'quality_level': must be an integer 1-5, got 7")


def test_error_unknown_split(tmp_path):
    check_error(tmp_path, [row(1, split="training")], 1, "split", "'training'", "valid")


def test_error_unknown_caption_source(tmp_path):
    check_error(tmp_path, [row(1), row(2, caption_source="llm")], 2, "caption_source", "'llm'")


def test_error_unknown_quality_prefix(tmp_path):
    check_error(tmp_path, [row(1, quality_prefix="great quality")], 1, "quality_prefix")


def test_error_nan_pmos(tmp_path):
    # json accepts the NaN literal, the manifest does not.
    check_error(tmp_path, [row(1), '{"id": "c", "audio": "c.wav", "pmos": NaN}'], 2, "pmos", "NaN")


def test_error_infinite_clap(tmp_path):
    line = '{"id": "c", "audio": "c.wav", "clap": {"original_audio": Infinity}}'
    check_error(tmp_path, [line], 1, "clap", "original_audio")


def test_error_negative_offset(tmp_path):
    check_error(tmp_path, [row(1, offset=-0.5)], 1, "offset", ">= 0")


def test_error_other_fields(tmp_path):
    check_error(tmp_path, [row(1, duration=0)], 1, "duration")
    check_error(tmp_path, [row(1, sample_rate=16000.0)], 1, "sample_rate")
    check_error(tmp_path, [row(1, errors={"mos": 3})], 1, "errors")
    check_error(tmp_path, [row(1, meta=[1])], 1, "meta")
    check_error(tmp_path, [row(1, final_caption=5)], 1, "final_caption")


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    write_lines(path, ["", row(1), "   ", row(2), ""])
    assert [r.id for r in read_manifest(path)] == ["clip1", "clip2"]


def test_last_line_without_newline_is_fine_when_complete(tmp_path):
    path = tmp_path / "m.jsonl"
    write_lines(path, [row(1), row(2)], trailing_newline=False)
    assert len(read_manifest(path)) == 2


def test_find_manifest_errors_collects_all(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [row(1), "{bad", row(2, pmos="x", split="nope"), row(1), "3", row(4)]
    write_lines(path, lines)
    found = find_manifest_errors(path)
    assert [(e.line, e.field) for e in found] == [
        (2, None),
        (3, "split"),
        (3, "pmos"),
        (4, "id"),
        (5, None),
    ]
    assert len(find_manifest_errors(path, limit=2)) == 2
    good = tmp_path / "good.jsonl"
    write_manifest(good, [rec(1), rec(2)])
    assert find_manifest_errors(good) == []


# --- truncated tail --------------------------------------------------------------------


def test_truncated_tail_raises_by_default(tmp_path):
    path = tmp_path / "m.jsonl"
    write_lines(path, [row(1), row(2), row(3)[:12]], trailing_newline=False)
    with pytest.raises(ManifestError, match="line 3.*truncated"):
        read_manifest(path)
    assert "truncated" in str(find_manifest_errors(path)[0])


def test_truncated_tail_skipped_when_allowed(tmp_path):
    path = tmp_path / "m.jsonl"
    write_lines(path, [row(1), row(2), row(3)[:12]], trailing_newline=False)
    with pytest.warns(ManifestWarning, match="m.jsonl"):
        records = read_manifest(path, allow_truncated_tail=True)
    assert [r.id for r in records] == ["clip1", "clip2"]


def test_truncated_multibyte_character_is_a_truncated_tail(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = json.dumps({"id": "x", "audio": "x.wav", "final_caption": "é"}, ensure_ascii=False)
    data = (row(1) + "\n").encode() + tail.encode("utf-8")[:-4]
    path.write_bytes(data)
    with pytest.warns(ManifestWarning):
        assert len(read_manifest(path, allow_truncated_tail=True)) == 1


def test_broken_middle_line_is_not_a_truncated_tail(tmp_path):
    path = tmp_path / "m.jsonl"
    write_lines(path, [row(1), row(2)[:10], row(3)])
    with pytest.raises(ManifestError, match="line 2"):
        read_manifest(path, allow_truncated_tail=True)


# --- appender --------------------------------------------------------------------------


def test_appender_creates_and_appends(tmp_path):
    path = tmp_path / "out.jsonl"
    with ManifestAppender(path) as out:
        assert len(out) == 0
        out.append(rec(1))
        out.append(rec(2))
        assert "clip1" in out and rec(2) in out and "clip3" not in out
    assert [r.id for r in read_manifest(path)] == ["clip1", "clip2"]


def test_appender_resumes_after_kill(tmp_path):
    path = tmp_path / "out.jsonl"
    with ManifestAppender(path, fsync_every=1) as out:
        out.append(rec(1))
        out.append(rec(2))
    # A killed process leaves half a line behind.
    with open(path, "ab") as f:
        f.write(json.dumps(rec(3).to_dict()).encode()[:25])
    with pytest.warns(ManifestWarning, match="truncated"):
        out = ManifestAppender(path).open()
    try:
        assert out.done_ids == {"clip1", "clip2"}
        out.append(rec(3))
        with pytest.raises(ManifestError, match="clip2"):
            out.append(rec(2))
    finally:
        out.close()
    assert [r.id for r in read_manifest(path)] == ["clip1", "clip2", "clip3"]


def test_appender_completes_row_missing_its_newline(tmp_path):
    path = tmp_path / "out.jsonl"
    write_lines(path, [row(1), row(2)], trailing_newline=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ManifestAppender(path) as out:
            assert out.done_ids == {"clip1", "clip2"}
            out.append(rec(3))
    assert [r.id for r in read_manifest(path)] == ["clip1", "clip2", "clip3"]


def test_appender_refuses_invalid_file_without_touching_it(tmp_path):
    path = tmp_path / "out.jsonl"
    write_lines(path, [row(1), "{oops", row(3)[:10]], trailing_newline=False)
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="line 2"):
        ManifestAppender(path).open()
    assert path.read_bytes() == before


def test_appender_rejects_invalid_record_and_writes_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    with ManifestAppender(path) as out:
        with pytest.raises(ManifestError, match="quality_level"):
            out.append(rec(1, quality_level=9))
        with pytest.raises(ManifestError, match="meta"):
            out.append(rec(2, meta={"x": object()}))
        assert len(out) == 0
    assert path.read_bytes() == b""


def test_appender_rebases_from_source_dir(tmp_path):
    src = tmp_path / "src"
    make_audio(src, ["audio/1.wav"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with ManifestAppender(out_dir / "m.jsonl", source_dir=src) as out:
        out.append(rec(1))
    (r,) = read_manifest(out_dir / "m.jsonl")
    assert r.audio == "../src/audio/1.wav" and r.audio_path(out_dir).is_file()


# --- atomic write ----------------------------------------------------------------------


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [rec(1), rec(2)])
    before = path.read_bytes()
    bad = [rec(3), rec(4), rec(5, meta={"handle": object()}), rec(6)]
    with pytest.raises(ManifestError) as info:
        write_manifest(path, bad)
    assert info.value.field == "meta" and info.value.line == 3 and "clip5" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl"]


def test_atomic_write_keeps_old_file_when_generator_fails(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [rec(1)])
    before = path.read_bytes()

    def records():
        yield rec(2)
        raise RuntimeError("stage crashed")

    with pytest.raises(RuntimeError):
        write_manifest(path, records())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.jsonl"]


def test_write_rejects_invalid_and_duplicate_records(tmp_path):
    path = tmp_path / "m.jsonl"
    with pytest.raises(ManifestError, match="line 2, field 'pmos'"):
        write_manifest(path, [rec(1), rec(2, pmos=math.nan)])
    with pytest.raises(ManifestError, match="duplicate"):
        write_manifest(path, [rec(1), rec(1)])
    assert not path.exists() and os.listdir(tmp_path) == []


# --- merge -----------------------------------------------------------------------------


def test_merge_base_and_two_shards(tmp_path):
    base = tmp_path / "base.jsonl"
    write_manifest(base, [rec(i) for i in range(6)])
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    records = read_manifest(base)
    s0 = shard_dir / "s0.jsonl"
    s1 = shard_dir / "s1.jsonl"
    write_manifest(s0, [records[4].replace(pmos=4.0), records[0].replace(pmos=0.5)], tmp_path)
    write_manifest(s1, [records[2].replace(pmos=2.0)], source_dir=tmp_path)
    out = tmp_path / "merged.jsonl"
    stats = merge_manifests(out, [s0, s1], base_path=base)
    assert stats == MergeStats(written=6, shard_rows=3, replaced=3, unchanged=3, conflicts=0)
    merged = read_manifest(out)
    assert [r.id for r in merged] == [f"clip{i}" for i in range(6)]
    assert [r.pmos for r in merged] == [0.5, None, 2.0, None, 4.0, None]
    # Shard paths were rebased into the shard folder and back.
    assert json.loads(s0.read_text().splitlines()[0])["audio"] == "../audio/4.wav"
    assert all(r.audio == f"audio/{i}.wav" for i, r in enumerate(merged))


def test_merge_in_place_over_base(tmp_path):
    base = tmp_path / "base.jsonl"
    write_manifest(base, [rec(i) for i in range(3)])
    shard = tmp_path / "s.jsonl"
    write_manifest(shard, [rec(1, pmos=3.0)])
    merge_manifests(base, [shard], base_path=base)
    assert [r.pmos for r in read_manifest(base)] == [None, 3.0, None]
    assert sorted(os.listdir(tmp_path)) == ["base.jsonl", "s.jsonl"]


def test_merge_unknown_id_names_shard(tmp_path):
    base = tmp_path / "base.jsonl"
    write_manifest(base, [rec(i) for i in range(3)])
    shard = tmp_path / "shard-1.jsonl"
    write_manifest(shard, [rec(1), rec(99)])
    out = tmp_path / "out.jsonl"
    with pytest.raises(ManifestError) as info:
        merge_manifests(out, [shard], base_path=base)
    msg = str(info.value)
    assert "shard-1.jsonl" in msg and "line 2" in msg and "clip99" in msg
    assert not out.exists()


def test_merge_concatenation_without_base(tmp_path):
    s0 = tmp_path / "s0.jsonl"
    s1 = tmp_path / "sub" / "s1.jsonl"
    s1.parent.mkdir()
    write_manifest(s0, [rec(0), rec(2)])
    write_manifest(s1, [rec(1), rec(3)], source_dir=tmp_path)
    out = tmp_path / "out.jsonl"
    stats = merge_manifests(out, [s0, s1])
    assert stats.written == 4 and stats.shard_rows == 4 and stats.replaced == 0
    merged = read_manifest(out)
    assert [r.id for r in merged] == ["clip0", "clip2", "clip1", "clip3"]
    assert [r.audio for r in merged] == ["audio/0.wav", "audio/2.wav", "audio/1.wav", "audio/3.wav"]


def test_merge_conflict_error_and_last(tmp_path):
    s0 = tmp_path / "s0.jsonl"
    s1 = tmp_path / "s1.jsonl"
    write_manifest(s0, [rec(0), rec(1, pmos=1.0)])
    write_manifest(s1, [rec(2), rec(1, pmos=9.0)])
    out = tmp_path / "out.jsonl"
    with pytest.raises(ManifestError) as info:
        merge_manifests(out, [s0, s1])
    msg = str(info.value)
    assert "s1.jsonl, line 2" in msg and "s0.jsonl, line 2" in msg and "clip1" in msg
    assert not out.exists()

    stats = merge_manifests(out, [s0, s1], on_conflict="last")
    assert stats.conflicts == 1 and stats.written == 3
    merged = read_manifest(out)
    assert [r.id for r in merged] == ["clip0", "clip2", "clip1"]
    assert merged[2].pmos == 9.0

    base = tmp_path / "base.jsonl"
    write_manifest(base, [rec(i) for i in range(3)])
    with pytest.raises(ManifestError, match="clip1"):
        merge_manifests(out, [s0, s1], base_path=base)
    stats = merge_manifests(out, [s0, s1], base_path=base, on_conflict="last")
    assert [r.pmos for r in read_manifest(out)] == [None, 9.0, None]
    assert stats.replaced == 3 and stats.conflicts == 1

    with pytest.raises(ValueError):
        merge_manifests(out, [s0], on_conflict="first")


def test_merge_truncated_shard(tmp_path):
    s0 = tmp_path / "s0.jsonl"
    write_manifest(s0, [rec(0)])
    with open(s0, "ab") as f:
        f.write(b'{"id": "clip1", "au')
    out = tmp_path / "out.jsonl"
    with pytest.raises(ManifestError, match="truncated"):
        merge_manifests(out, [s0])
    with pytest.warns(ManifestWarning):
        stats = merge_manifests(out, [s0], allow_truncated_tail=True)
    assert stats.written == 1


# --- shards ----------------------------------------------------------------------------


@pytest.mark.parametrize("n, k", [(10, 3), (7, 7), (3, 5), (0, 2), (5, 1)])
def test_shard_records_covers_everything_once(n, k):
    records = [rec(i) for i in range(n)]
    shards = [shard_records(records, k, i) for i in range(k)]
    ids = [r.id for s in shards for r in s]
    assert sorted(ids) == sorted(r.id for r in records)
    assert len(set(ids)) == n
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert shard_records(iter(records), k, 0) == shards[0]


def test_shard_records_round_robin_and_bad_args():
    records = [rec(i) for i in range(5)]
    assert [r.id for r in shard_records(records, 2, 1)] == ["clip1", "clip3"]
    for args in [(0, 0), (2, 2), (2, -1), (True, 0)]:
        with pytest.raises(ValueError):
            shard_records(records, *args)


# --- summary ---------------------------------------------------------------------------


def summary_records():
    return [
        ClipRecord(
            id="a",
            audio="a.wav",
            duration=10.0,
            original_caption="x",
            final_caption="x",
            caption_source="original",
            pmos=2.0,
            quality_level=2,
            quality_prefix="low quality",
            clap={"original_audio": 0.2},
        ),
        ClipRecord(
            id="b",
            audio="b.wav",
            duration=20.0,
            split="valid",
            original_caption="  ",
            generated_caption="g",
            final_caption="g",
            caption_source="generated",
            pmos=4.0,
            quality_level=4,
            quality_prefix="high quality",
            clap={"original_audio": 0.4, "generated_audio": 0.5},
        ),
        ClipRecord(
            id="c",
            audio="c.wav",
            duration=30.0,
            split="test",
            original_caption="o",
            generated_caption="g",
            pmos=3.0,
            quality_level=4,
            quality_prefix="high quality",
            errors={"caption": "timeout"},
        ),
        ClipRecord(id="d", audio="d.wav", errors={"caption": "oom", "pmos": "silent"}),
    ]


def test_summarize_numbers():
    s = summarize(summary_records())
    assert s["clips"] == 4
    assert s["splits"] == {"train": 2, "valid": 1, "test": 1}
    d = s["duration"]
    assert d["known"] == 3 and d["missing"] == 1
    assert d["total_seconds"] == 60.0
    assert d["total_hours"] == pytest.approx(60.0 / 3600.0)
    assert d["mean_seconds"] == pytest.approx(20.0)
    c = s["captions"]
    assert c["original"] == 2 and c["original_missing"] == 2
    assert c["generated"] == 2 and c["final"] == 2
    assert c["source"] == {"original": 1, "generated": 1, "merged": 0, "none": 0, "unset": 2}
    assert s["clap"]["original_audio"]["count"] == 2
    assert s["clap"]["original_audio"]["mean"] == pytest.approx(0.3)
    assert s["clap"]["generated_audio"] == {"count": 1, "mean": 0.5}
    # p-MOS 2, 4, 3: mean 3, population std sqrt(2/3).
    p = s["pmos"]
    assert p["count"] == 3 and p["min"] == 2.0 and p["max"] == 4.0
    assert p["mean"] == pytest.approx(3.0)
    assert p["std"] == pytest.approx(math.sqrt(2.0 / 3.0))
    assert s["quality_level"] == {"1": 0, "2": 1, "3": 0, "4": 2, "5": 0, "unset": 1}
    assert s["quality_prefix"] == {
        "low quality": 1,
        "medium quality": 0,
        "high quality": 2,
        "unset": 1,
    }
    assert s["errors"] == {"rows": 2, "stages": {"caption": 2, "pmos": 1}}
    assert json.loads(json.dumps(s)) == s


def test_summarize_empty_and_format():
    empty = summarize([])
    assert empty["clips"] == 0 and empty["pmos"]["mean"] is None
    assert json.loads(json.dumps(empty)) == empty
    assert "clips" in format_summary(empty)
    text = format_summary(summarize(summary_records()))
    assert "p-MOS" in text and "high quality" in text and "caption" in text
    assert "3.000 +- 0.816" in text
    lines = text.splitlines()
    assert lines[0].split() == ["clips", "4"]

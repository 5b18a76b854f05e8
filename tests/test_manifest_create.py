import json

import numpy as np
import pytest
import soundfile as sf

from qamdt.cli.main import main
from qamdt.errors import ConfigError, ManifestError
from qamdt.manifest import read_manifest
from qamdt.manifest.create import CreateSettings, clip_offsets, create_manifest, split_of
from qamdt.manifest.stages import load_clip_audio


def tone(seconds, rate=16000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + t)).astype(np.float32) / (1 + seconds)


@pytest.fixture
def songs(tmp_path):
    root = tmp_path / "songs"
    (root / "band_a").mkdir(parents=True)
    (root / "band_b" / "live").mkdir(parents=True)
    sf.write(root / "band_a" / "x.wav", tone(2.5), 16000)
    (root / "band_a" / "x.txt").write_text("a slow piano piece\n")
    sf.write(root / "band_a" / "y.flac", tone(0.6, 22050), 22050)
    (root / "band_a" / "y.json").write_text(json.dumps({"tags": ["rock", "guitar"]}))
    sf.write(root / "band_b" / "live" / "z.ogg", tone(1.2), 16000, format="OGG")
    (root / "band_b" / "broken.mp3").write_bytes(b"\x00\x01not audio" * 50)
    (root / "band_b" / "empty.wav").write_bytes(b"")
    (root / "band_b" / "notes.md").write_text("not audio")
    return root


def test_rows_point_into_files_with_offsets_captions_and_failures(songs, tmp_path):
    captions = tmp_path / "captions.csv"
    captions.write_text("path,caption\nband_b/live/z.ogg,a live recording\n")
    out = tmp_path / "data" / "manifest.jsonl"
    settings = CreateSettings(clip_seconds=1.0, hop_seconds=0.5)
    summary = create_manifest([songs], out, settings, captions=captions)
    rows = read_manifest(out)
    assert summary["files"] == 5 and summary["unreadable"] == 2 and summary["rows"] == len(rows)
    by_id = {r.id: r for r in rows}
    x = [r for r in rows if r.meta["source"] == "band_a/x.wav"]
    assert [r.offset for r in x] == [0.0, 0.5, 1.0, 1.5]
    assert all(r.duration == 1.0 and r.sample_rate == 16000 for r in x)
    assert {r.original_caption for r in x} == {"a slow piano piece"}
    assert len({r.split for r in x}) == 1  # one file, one split
    # Shorter than one clip: one row of its whole length.
    assert by_id["band_a/y#0000"].duration == pytest.approx(0.6)
    assert by_id["band_a/y#0000"].original_caption == "rock, guitar"
    assert by_id["band_b/live/z#0000"].original_caption == "a live recording"
    # Paths are relative to the manifest's folder and each row decodes just its clip.
    assert not x[0].audio.startswith("/")
    wave, rate = load_clip_audio(x[2], out.parent)
    full, _ = sf.read(songs / "band_a" / "x.wav", dtype="float32")
    assert rate == 16000 and np.allclose(wave, full[16000:32000])
    failures = [
        json.loads(line)
        for line in (tmp_path / "data/manifest.jsonl.failures.jsonl").read_text().splitlines()
    ]
    assert {f["audio"].rsplit("/", 1)[1] for f in failures} == {"broken.mp3", "empty.wav"}
    assert all(f["reason"] for f in failures)


def test_ids_and_splits_are_stable(songs, tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    create_manifest([songs], first, CreateSettings(clip_seconds=1.0))
    (songs / "band_a" / "new.wav").parent.mkdir(exist_ok=True)
    sf.write(songs / "band_a" / "new.wav", tone(1.0), 16000)
    create_manifest([songs], second, CreateSettings(clip_seconds=1.0, workers=1))
    old = {r.id: r.split for r in read_manifest(first)}
    new = {r.id: r.split for r in read_manifest(second)}
    assert set(old) < set(new) and all(new[k] == v for k, v in old.items())


def test_split_by_folder_keeps_a_folder_together(songs, tmp_path):
    out = tmp_path / "m.jsonl"
    create_manifest([songs], out, CreateSettings(split_by="folder"))
    splits = {}
    for row in read_manifest(out):
        splits.setdefault(row.meta["source"].rsplit("/", 1)[0], set()).add(row.split)
    assert all(len(s) == 1 for s in splits.values())


def test_split_shares_and_clip_offsets():
    keys = [f"file{i}.wav" for i in range(4000)]
    counts = {s: 0 for s in ("train", "valid", "test")}
    for key in keys:
        counts[split_of(key, (0.8, 0.1, 0.1))] += 1
    assert abs(counts["train"] / 4000 - 0.8) < 0.03 and counts["test"] > 300
    assert split_of("x", (0.0, 0.0, 1.0)) == "test"
    assert clip_offsets(10.0, CreateSettings(clip_seconds=4, hop_seconds=3)) == [
        (0.0, 4),
        (3.0, 4),
        (6.0, 4),
    ]
    assert clip_offsets(10.0, CreateSettings()) == [(0.0, 10.0)]


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"split": (0.5, 0.5, 0.5)}, "--split"),
        ({"hop_seconds": 1.0}, "--hop-seconds"),
        ({"clip_seconds": float("nan")}, "--clip-seconds"),
        ({"workers": 0}, "--workers"),
    ],
)
def test_bad_settings_name_the_option(changes, named):
    with pytest.raises(ConfigError, match=named):
        CreateSettings(**changes)


def test_malformed_captions_name_the_line(songs, tmp_path):
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"path": "band_a/x.wav", "caption": "ok"}\n{"caption": "no key"}\n')
    with pytest.raises(ManifestError, match="line 2"):
        create_manifest([songs], tmp_path / "m.jsonl", captions=captions)


def test_command_line(songs, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    argv = ["manifest", "create", str(songs), "--out", str(out), "--clip-seconds", "1"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == len(read_manifest(out))
    assert main(["manifest", "create", str(tmp_path / "none"), "--out", str(out)]) == 2

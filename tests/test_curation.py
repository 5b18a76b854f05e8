"""Curation at scale: --shard parts, two processes, bad files, a million rows, qamdt curate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from kill_stages import SR, FakeCaptioner, FakeClap, FakeMos, make_manifest

from captioning.refine import score_manifest
from mos_predictor.label import label_manifest
from qamdt.cli.main import main
from qamdt.curation.select import Selection, parse_condition
from qamdt.errors import ConfigError, ManifestError, QamdtError
from qamdt.manifest import ClipRecord, read_manifest, write_manifest
from qamdt.manifest.ids import DuplicateFinder
from qamdt.manifest.parts import merge_parts, parse_part, part_path, prepare_part
from qamdt.manifest.reading import find_manifest_errors
from qamdt.manifest.stage_state import stage_identity

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def content(path: Path, *folders: Path) -> str:
    """A file's text with the given folders (named in error messages) left out."""
    text = path.read_text()
    for folder in folders:
        text = text.replace(str(folder), "DIR")
    return text


# --- --select -------------------------------------------------------------------------


def test_select_expressions_are_parsed_not_evaluated():
    rows = [
        ClipRecord(id="a", audio="a.wav", pmos=3.6, quality_level=4, clap={"generated_audio": 0.3}),
        ClipRecord(id="b", audio="b.wav", pmos=3.4, quality_level=3, split="test"),
        ClipRecord(id="c", audio="c.wav"),
    ]
    pick = Selection.parse(["pmos>=3.5", "level >= 4", "clap>0.2"])
    assert [r.id for r in rows if pick.matches(r)] == ["a"]
    assert [r.id for r in rows if Selection.parse(["split == test"]).matches(r)] == ["b"]
    assert [r.id for r in rows if Selection.parse(["split!='test'"]).matches(r)] == ["a", "c"]
    assert parse_condition("clap.original_audio<0.1").field == "clap.original_audio"
    for bad, words in (
        ("pmos >> 3", "--select 'pmos >> 3'"),
        ("__import__('os').system('x')", "expected FIELD OP VALUE"),
        ("mos>=3", "unknown field 'mos'"),
        ("pmos>=high", "needs a number"),
        ("pmos>=nan", "finite"),
    ):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_condition(bad)


def test_shard_argument_is_checked():
    assert parse_part("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_part(bad)


# --- duplicate ids in bounded memory -------------------------------------------------------


def test_duplicate_finder_across_spilled_buffers_matches_a_set():
    rng = np.random.default_rng(0)
    ids = [f"id{int(i)}" for i in rng.integers(0, 400, size=600)]
    with DuplicateFinder(buffer_rows=32) as finder:
        for line, rid in enumerate(ids, start=1):
            finder.add(rid, line)
        pairs = finder.candidate_lines()
    seen, expected = {}, set()
    for line, rid in enumerate(ids, start=1):
        if rid in seen:
            expected.add((seen[rid], line))
        else:
            seen[rid] = line
    assert expected <= set(pairs)
    assert all(ids[a - 1] == ids[b - 1] for a, b in pairs)


def test_duplicate_id_named_with_both_lines_after_a_spill(tmp_path, monkeypatch):
    monkeypatch.setattr("qamdt.manifest.ids.BUFFER_ROWS", 8)
    rows = [json.dumps({"id": f"r{i}", "audio": "a.wav"}) for i in range(40)]
    rows.append(json.dumps({"id": "r3", "audio": "a.wav"}))
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(rows) + "\n")
    errors = find_manifest_errors(path)
    assert [(e.line, e.field) for e in errors] == [(41, "id")]
    assert "line 4" in str(errors[0])
    with pytest.raises(ManifestError, match="duplicate id 'r3', already used on line 4"):
        read_manifest(path)


# --- --shard parts ---------------------------------------------------------------------------


def _stages(manifest, part=None, workers=0):
    label_manifest(manifest, FakeMos(), batch_size=3, progress=False, part=part, workers=workers)
    score_manifest(
        manifest, FakeClap(), FakeCaptioner(), batch_size=3, progress=False, part=part,
        workers=workers,
    )  # fmt: skip


def test_two_shard_runs_merged_give_the_rows_of_one_run(tmp_path):
    torch.set_num_threads(1)
    one = make_manifest(tmp_path / "one", rows=15, short=2)
    two = make_manifest(tmp_path / "two", rows=15, short=2)
    _stages(one)
    before = two.read_bytes()
    _stages(two, part=(1, 2), workers=2)
    _stages(two, part=(0, 2))
    assert two.read_bytes() == before  # the parts leave the manifest alone
    parts = sorted(two.parent.glob("manifest.*-part*of2.jsonl"))
    assert len(parts) == 4
    assert [r.id for r in read_manifest(part_path(two, "pmos", (1, 2)))] == [
        f"c{i:02d}" for i in range(1, 15, 2)
    ]
    with pytest.raises(QamdtError, match="missing 1/2"):
        merge_parts([p for p in parts if "part1" not in p.name], two)
    summary = merge_parts(parts, two)
    assert summary["pmos"]["parts"] == summary["captions"]["parts"] == 2
    assert content(two, two.parent) == content(one, one.parent)
    rows = read_manifest(two)
    assert sum(r.pmos is not None for r in rows) == 13 and sum("mos" in r.errors for r in rows) == 2


def test_unfinished_part_is_refused_by_merge(tmp_path, capsys):
    manifest = make_manifest(tmp_path, rows=6)
    label_manifest(manifest, FakeMos(), progress=False, part=(0, 2))
    part = part_path(manifest, "pmos", (0, 2))
    state = part.with_name(part.name.replace(".jsonl", ".state.json"))
    values = json.loads(state.read_text())
    state.write_text(json.dumps({**values, "complete": False}))
    assert main(["manifest", "merge", str(part)]) == 2
    assert "part 0/2 is not finished" in capsys.readouterr().err


# --- two processes ---------------------------------------------------------------------------


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    # accelerate launch --cpu --num_processes 2 starts a single worker on this machine;
    # torchrun starts two processes that form a gloo group.
    command = [
        PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "qamdt.cli.main", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny MOS model and a tiny CLAP scorer, saved as folders (random weights)."""
    from tiny_clap import TINY_CLAP

    from captioning.embedded_clap import EmbeddedClapScorer
    from mos_predictor.models import build_mos_model

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    mos = build_mos_model(
        {"kind": "embedded", "cnn_channels": [4, 8], "cnn_strides": [[2, 2], [2, 2]],
         "embed_dim": 8, "window_seconds": 1.0, "head_hidden": 8}
    )  # fmt: skip
    mos.eval().save_pretrained(folder / "mos")
    EmbeddedClapScorer(TINY_CLAP).save_pretrained(folder / "clap")
    return folder


def _dataset(root: Path) -> Path:
    manifest = make_manifest(root, rows=14, short=1)
    rows = [
        r.replace(generated_caption=f"a calm piece {i}") if i % 3 else r
        for i, r in enumerate(read_manifest(manifest))
    ]
    write_manifest(manifest, rows)
    return manifest


def _curate(manifest, out, models, *extra):
    return main([
        "curate", str(manifest), "--mos", str(models / "mos"), "--clap", str(models / "clap"),
        "--rho1", "p20", "--rho2", "p20", "--rho3", "0.9", "--select", "pmos>=2", "--select",
        "level>=3", "--out", str(out), "--batch-size", "4", "--quiet", *extra,
    ])  # fmt: skip


def test_two_processes_give_the_rows_of_one(tmp_path, models):
    data = _dataset(tmp_path / "data")
    assert _curate(data, tmp_path / "one", models) == 0
    done = _torchrun(
        "curate", str(data), "--mos", str(models / "mos"), "--clap", str(models / "clap"),
        "--rho1", "p20", "--rho2", "p20", "--rho3", "0.9", "--select", "pmos>=2", "--select",
        "level>=3", "--out", str(tmp_path / "two"), "--batch-size", "4", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    folders = (tmp_path / "one", tmp_path / "two")
    for name in ("manifest.jsonl", "selected.jsonl", "quality_stats.json"):
        assert content(folders[1] / name, *folders) == content(folders[0] / name, *folders)


def test_curate_shards_resume_and_report(tmp_path, models, capsys):
    data = _dataset(tmp_path / "data")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert _curate(data, single, models) == 0
    assert _curate(data, sharded, models, "--shard", "1/2", "--workers", "1") == 0
    assert _curate(data, sharded, models, "--shard", "0/2") == 0
    assert not (sharded / "report.html").exists()
    assert _curate(data, sharded, models) == 0  # merges the parts, then finishes
    assert not list(sharded.glob("*-part*"))
    folders = (single, sharded)
    for name in ("manifest.jsonl", "selected.jsonl", "quality_stats.json"):
        assert content(sharded / name, *folders) == content(single / name, *folders)
    curated = read_manifest(single / "manifest.jsonl")
    selected = read_manifest(single / "selected.jsonl")
    assert selected and all(r.pmos >= 2 and r.quality_level >= 3 for r in selected)
    assert len(selected) == sum(r.pmos is not None and r.quality_level >= 3 for r in curated)
    assert all(r.final_caption is not None or "refine" in r.meta for r in curated if r.clap)
    sidecar = json.loads((single / "curation.json").read_text())
    assert sidecar["settings"]["select"] == ["pmos>=2", "level>=3"]
    assert set(sidecar["steps"]["run"]) >= {"label", "captions", "quality", "refine", "report"}
    page = (single / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<audio" in page
    players = list((single / "report_clips").glob("*.wav"))
    assert players and all(sf.info(p).frames > 0 for p in players)
    assert "Quality levels per source folder" in page and "fused" in page
    again = (single / "manifest.jsonl").read_bytes()
    capsys.readouterr()
    assert _curate(data, single, models) == 0  # a finished job run again changes nothing
    assert (single / "manifest.jsonl").read_bytes() == again
    assert _curate(data, single, models, "--rho1", "0.5") == 2
    assert "rho1" in capsys.readouterr().err
    assert _curate(data, tmp_path / "x", models, "--select", "pmos>>2") == 2
    assert "--select 'pmos>>2'" in capsys.readouterr().err


# --- bad files -------------------------------------------------------------------------


def test_bad_files_are_recorded_and_the_rest_go_on(tmp_path, models, capsys):
    songs = tmp_path / "songs"
    (songs / "good").mkdir(parents=True)
    (songs / "bad").mkdir()
    t = np.arange(2 * SR) / SR
    for i in range(4):
        sf.write(songs / "good" / f"g{i}.wav", 0.2 * np.sin(2 * np.pi * (220 + 40 * i) * t), SR)
    (songs / "bad" / "random.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    sf.write(songs / "bad" / "silent.wav", np.zeros(2 * SR), SR)
    sf.write(songs / "bad" / "short.wav", 0.2 * np.sin(np.arange(SR // 10)), SR)
    sf.write(songs / "bad" / "cut.flac", 0.2 * np.sin(np.arange(4 * SR) / 3), SR)
    cut = songs / "bad" / "cut.flac"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])  # header says 4 s
    manifest = tmp_path / "m.jsonl"
    assert main(["manifest", "create", str(songs), "--out", str(manifest)]) == 0
    failures = [json.loads(x) for x in Path(f"{manifest}.failures.jsonl").read_text().splitlines()]
    assert [Path(f["audio"]).name for f in failures] == ["random.wav"]
    capsys.readouterr()
    out = tmp_path / "out"
    code = main(
        ["curate", str(manifest), "--mos", str(models / "mos"), "--out", str(out), "--quiet"]
    )
    assert code == 0
    rows = {Path(r.audio).name: r for r in read_manifest(out / "manifest.jsonl")}
    assert "silent" in rows["silent.wav"].errors["mos"]
    assert "shorter than" in rows["short.wav"].errors["mos"]
    assert rows["cut.flac"].pmos is not None or "cut.flac" in rows["cut.flac"].errors["mos"]
    assert all(rows[f"g{i}.wav"].pmos is not None for i in range(4))
    assert "Rows not processed" in (out / "report.html").read_text()


# --- a million rows ------------------------------------------------------------------------

_MILLION = """
import sys
from qamdt.manifest.parts import prepare_part
from qamdt.manifest.stage_state import stage_identity

path, rows = sys.argv[1], int(sys.argv[2])
row = ('{"id": "clip%07d", "audio": "audio/%d/clip%07d.wav", "offset": %d.0, '
       '"duration": 10.0, "split": "train", "pmos": 3.%d}\\n')
with open(path, "w") as f:
    f.writelines(row % (i, i % 100, i, i % 7, i % 10) for i in range(rows))
# Writing a part validates every row of the manifest (fields, unique ids) on the way.
part = prepare_part(path, stage_identity("pmos", ["pmos"], "m", {}), (1, 2), log=print)
with open(part, "rb") as f:
    count = sum(1 for _ in f)
# VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork and exec.
peak = next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]
print(count, int(peak) // 1024)
"""


def _peak_mb(path: Path, rows: int) -> tuple[int, int]:
    done = subprocess.run(
        [PYTHON, "-c", _MILLION, str(path), str(rows)], capture_output=True, text=True,
        timeout=600, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    count, peak = done.stdout.split()[-2:]
    return int(count), int(peak)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_a_million_rows_validated_and_sharded_in_bounded_memory(tmp_path):
    small_rows, small_peak = _peak_mb(tmp_path / "small.jsonl", 20_000)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "audio": "a.wav"}\n{"id": "a", "audio": "b.wav"}\n')
    with pytest.raises(ManifestError, match="duplicate id 'a'"):
        prepare_part(bad, stage_identity("pmos", ["pmos"], "m", {}), (0, 2), log=print)
    assert not part_path(bad, "pmos", (0, 2)).exists()
    rows, peak = _peak_mb(tmp_path / "million.jsonl", 1_000_000)
    assert (small_rows, rows) == (10_000, 500_000)
    # The ids of a million rows alone would take about 100 MB as a Python set.
    assert peak - small_peak < 24, (small_peak, peak)


# --- kills -----------------------------------------------------------------------------


def _fake_models(delay: float = 0.0) -> dict:
    from captioning.merge import RuleMerger

    return {
        "mos": FakeMos(delay=delay),
        "clap": FakeClap(delay),
        "captioner": FakeCaptioner(),
        "merger": RuleMerger(),
    }


def _fake_curate(manifest, out, delay=0.0, **options):
    from qamdt.curation.job import curate
    from qamdt.curation.settings import CurationSettings

    settings = CurationSettings(
        mos="fake", clap="fake", captioner="fake", rho1="p20", rho2="p20", rho3=0.9,
        select=("level>=3",), batch_size=2, **options,
    )  # fmt: skip
    return curate(manifest, out, settings, _fake_models(delay), progress=False, log=lambda _: None)


def test_killed_parts_and_jobs_resume_to_the_same_files(tmp_path):
    from kill_stages import run_killed

    torch.set_num_threads(1)
    data = make_manifest(tmp_path / "data", rows=12, short=1)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _fake_curate(data, straight, part=(0, 2))
    _fake_curate(data, straight, part=(1, 2))
    _fake_curate(data, straight)
    rng = np.random.default_rng(3)
    finished = []
    for part in ((0, 2), (1, 2), None):
        for _ in range(2):
            after = rng.uniform(0.1, 0.8)
            finished.append(run_killed(_fake_curate, data, killed, 0.1, part=part, after=after))
        _fake_curate(data, killed, 0.1, part=part)  # the same models: FakeClap's delay is hashed
    assert finished.count(False) >= 3, finished
    for name in ("manifest.jsonl", "selected.jsonl", "quality_stats.json"):
        assert content(killed / name, straight, killed) == content(
            straight / name, straight, killed
        )
    assert "c00" in (killed / "report.html").read_text()


def test_merge_of_shards_in_any_order_gives_the_same_rows(tmp_path):
    from qamdt.manifest import merge_manifests

    base = tmp_path / "base.jsonl"
    write_manifest(base, [ClipRecord(id=f"r{i}", audio=f"{i}.wav") for i in range(9)])
    rows = [ClipRecord(id=f"r{i}", audio=f"{i}.wav", pmos=float(i)) for i in (1, 4, 7, 2)]
    ordered, shuffled = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_manifest(ordered, sorted(rows, key=lambda r: r.id))
    write_manifest(shuffled, rows)  # r2 after r7: merged through the index instead
    for shard in (ordered, shuffled):
        out = tmp_path / f"out-{shard.name}"
        stats = merge_manifests(out, [shard], base_path=base, fields=["pmos"])
        assert (stats.replaced, stats.unchanged, stats.written) == (4, 5, 9)
        assert [r.pmos for r in read_manifest(out)] == [None, 1, 2, None, 4, None, None, 7, None]

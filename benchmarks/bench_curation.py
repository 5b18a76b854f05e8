"""Curation at scale: stage throughput against decoding alone, memory against row count.

Usage: python benchmarks/bench_curation.py [--songs 40] [--rows 10000 100000 1000000]
       [--files 10000] [--skip throughput memory create]

Prints three tables, each with ratios against reference runs in the same process:

1. p-MOS labelling and caption scoring (CLAP) of clips cut from synthetic songs (FLAC,
   44.1 kHz stereo, 30 s, cut into 10 s clips by ``manifest create``), against decoding
   the same clips alone through the same decoding pipeline (``--workers`` 0 and 1). The
   models are the embedded MOS model and the embedded CLAP scorer at their default sizes,
   randomly initialised (the speed does not depend on the weights). The models alone on
   audio decoded beforehand are the second reference: what a stage cannot go below.
2. Peak resident memory of ``qamdt manifest validate`` and of a labelling pass over
   manifests of 10k, 100k and 1M rows, each in a fresh process, against the smallest. The
   labelling pass decodes every clip (all rows point into one 1 s WAV) and scores it with
   a one-parameter stand-in model, so the figure is the streaming machinery's.
3. ``qamdt manifest create`` on a folder of 10,000 small WAVs, against listing them.

The load average (``uptime``) is printed beside the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]


def load() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}  (load {load()})")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


# --- 1. throughput ------------------------------------------------------------------------


def make_songs(folder: Path, count: int, seconds: float = 30.0, rate: int = 44100) -> None:
    """``count`` FLAC songs: chords with a melody and noise, each with a caption file."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(count):
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        left = sum(np.sin(2 * np.pi * root * r * t) / (k + 1) for k, r in enumerate((1, 1.25, 1.5)))
        melody = np.sin(2 * np.pi * root * 4 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t)) * t)
        noise = rng.standard_normal(t.size) * (0.01 + 0.05 * (i % 5))
        wave = 0.2 * np.stack([left + 0.5 * melody + noise, left - 0.3 * melody + noise], axis=1)
        path = folder / f"album{i % 4}" / f"song{i:03d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), rate)
        path.with_suffix(".txt").write_text(f"chords, melody, {'calm' if i % 2 else 'lively'}")


def decode_only(manifest: Path, batch_size: int, workers: int) -> int:
    """Decodes every clip through the stages' pipeline; returns the clip count."""
    from qamdt.manifest import iter_manifest
    from qamdt.manifest.stages import MIN_CLIP_SECONDS, batched, prefetched

    count = 0
    rows = iter_manifest(manifest)
    for _batch, loaded in prefetched(
        batched(rows, batch_size), manifest.parent, MIN_CLIP_SECONDS, workers
    ):
        count += sum(error is None for _, _, error in loaded)
    return count


def _model_only(base: Path, rows, mos, clap) -> list[list[str]]:
    """The models alone on audio decoded beforehand: what a stage cannot go below."""
    from qamdt.manifest.stages import load_clip_audio

    loaded = [load_clip_audio(r, base.parent) for r in rows]
    waves, rates = [w for w, _ in loaded], [r for _, r in loaded]
    texts = [t for r in rows for t in (r.original_caption, r.generated_caption) if t]
    timed = []
    start = time.perf_counter()
    for i in range(0, len(waves), 16):
        mos.predict(waves[i : i + 16], rates[i : i + 16], batch_size=16)
    timed.append(("p-MOS model only, audio decoded before", time.perf_counter() - start))
    start = time.perf_counter()
    for i in range(0, len(waves), 16):
        clap.embed_audio(waves[i : i + 16], rates[i : i + 16])
        clap.embed_text(texts[2 * i : 2 * i + 32])
    timed.append(("CLAP model only, audio decoded before", time.perf_counter() - start))
    return timed


def bench_throughput(songs: int) -> None:
    from captioning.embedded_clap import EmbeddedClapScorer
    from captioning.refine import score_manifest
    from mos_predictor.label import label_manifest
    from mos_predictor.models import build_mos_model
    from qamdt.manifest import read_manifest, write_manifest
    from qamdt.manifest.create import CreateSettings, create_manifest

    torch.manual_seed(0)
    mos = build_mos_model({"kind": "embedded"}).eval()
    clap = EmbeddedClapScorer()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_songs(tmp / "songs", songs)
        base = tmp / "base.jsonl"
        create_manifest([tmp / "songs"], base, CreateSettings(clip_seconds=10.0))
        rows = [r.replace(generated_caption="a calm song with chords") for r in read_manifest(base)]
        audio_minutes = sum(r.duration for r in rows) / 60
        alone = _model_only(base, rows, mos, clap)
        results = [
            [name, "-", f"{t:.2f}", f"{len(rows) / t:.1f}", "-", "1.00"] for name, t in alone
        ]
        for workers in (0, 1):
            start = time.perf_counter()
            decode_only(base, 16, workers)
            reference = time.perf_counter() - start
            runs = [("decode only (reference)", reference)]
            for name, stage in (
                ("p-MOS labelling", lambda m, w=workers: label_manifest(
                    m, mos, batch_size=16, workers=w, progress=False)),
                ("caption scoring (CLAP)", lambda m, w=workers: score_manifest(
                    m, clap, None, batch_size=16, workers=w, progress=False)),
            ):  # fmt: skip
                copy = tmp / f"copy-{workers}.jsonl"
                write_manifest(copy, rows, source_dir=tmp)
                start = time.perf_counter()
                stage(copy)
                runs.append((name, time.perf_counter() - start))
            models = {"p-MOS labelling": alone[0][1], "caption scoring (CLAP)": alone[1][1]}
            for name, seconds in runs:
                versus = f"{models[name] / seconds:.2f}" if name in models else "-"
                results.append([
                    name, str(workers), f"{seconds:.2f}", f"{len(rows) / seconds:.1f}",
                    f"{reference / seconds:.2f}", versus,
                ])  # fmt: skip
    table(
        f"Stage throughput: {len(rows)} clips of 10 s ({audio_minutes:.0f} min) from {songs} "
        f"FLAC songs, batch 16, {torch.get_num_threads()} torch threads",
        ["run", "--workers", "seconds", "clips/s", "vs decode only", "vs model only"],
        results,
    )


# --- 2. memory ------------------------------------------------------------------------------


class LoudnessMos(torch.nn.Module):
    """A one-parameter stand-in MOS model: p-MOS from the clip's mean absolute value."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0))
        self.config = type("Config", (), {"kind": "embedded"})()

    def predict(self, waves, rates, texts=None, batch_size=16):
        scale = float(self.scale.detach())
        return [{"omq": 1.0 + scale * float(np.abs(w).mean())} for w in waves]


def write_rows(path: Path, rows: int) -> None:
    """``rows`` manifest rows, all pointing into ``clip.wav`` beside the manifest."""
    row = '{"id": "clip%07d", "audio": "clip.wav", "duration": 1.0, "split": "train"}\n'
    with open(path, "w") as handle:
        handle.writelines(row % i for i in range(rows))
    t = np.arange(8000) / 8000
    sf.write(path.parent / "clip.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)


def child(kind: str, path: str) -> None:
    """Runs one measured pass in this (fresh) process; prints seconds and peak RSS."""
    start = time.perf_counter()
    if kind == "validate":
        from qamdt.cli.main import main

        with open(os.devnull, "w") as quiet:
            sys.stdout = quiet
            code = main(["manifest", "validate", path])
            sys.stdout = sys.__stdout__
        assert code == 0
    else:
        from mos_predictor.label import label_manifest

        torch.set_num_threads(1)
        summary = label_manifest(path, LoudnessMos(), batch_size=256, progress=False)
        assert summary["scored"] == summary["rows"], summary
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork and exec.
    with open("/proc/self/status") as status:
        peak = int(next(x for x in status if x.startswith("VmHWM")).split()[1]) / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def bench_memory(sizes: list[int]) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("validate", "label"):
            reference = None
            for rows in sizes:
                folder = Path(tmp) / f"{kind}{rows}"
                folder.mkdir()
                write_rows(folder / "manifest.jsonl", rows)
                done = subprocess.run(
                    [sys.executable, __file__, "--child", kind, str(folder / "manifest.jsonl")],
                    capture_output=True, text=True, cwd=REPO, check=True,
                )  # fmt: skip
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                reference = reference or measured["peak_mb"]
                results.append([
                    "manifest validate" if kind == "validate" else "labelling pass",
                    f"{rows:,}", f"{measured['seconds']:.1f}", f"{rows / measured['seconds']:,.0f}",
                    f"{measured['peak_mb']:.0f}", f"{measured['peak_mb'] / reference:.2f}",
                ])  # fmt: skip
                print(f"  {kind} {rows:,} rows: {measured}  (load {load()})", flush=True)
    table(
        "Peak resident memory against the row count (each run a fresh process)",
        ["run", "rows", "seconds", "rows/s", "peak RSS MB", "vs smallest"],
        results,
    )


# --- 3. manifest create ---------------------------------------------------------------------


def bench_create(files: int) -> None:
    from qamdt.manifest.create import CreateSettings, create_manifest, find_audio_files

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "songs"
        wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)).astype(np.float32)
        for i in range(files):
            path = folder / f"artist{i % 100:02d}" / f"track{i:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave, 8000)
        start = time.perf_counter()
        found = len(find_audio_files([folder]))
        listing = time.perf_counter() - start
        start = time.perf_counter()
        summary = create_manifest([folder], Path(tmp) / "m.jsonl", CreateSettings(workers=4))
        creating = time.perf_counter() - start
    assert summary["rows"] == found == files
    table(
        f"qamdt manifest create on {files:,} WAV files (0.5 s, 8 kHz) in 100 folders",
        ["run", "seconds", "files/s", "vs listing"],
        [
            ["listing the files (reference)", f"{listing:.2f}", f"{files / listing:,.0f}", "1.0"],
            [
                "manifest create, 4 header threads",
                f"{creating:.2f}",
                f"{files / creating:,.0f}",
                f"{creating / listing:.1f}",
            ],
        ],  # fmt: skip
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--songs", type=int, default=40)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "memory", "create"])
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"{os.cpu_count()} CPUs; load {load()}")
    if "throughput" not in args.skip:
        bench_throughput(args.songs)
    if "create" not in args.skip:
        bench_create(args.files)
    if "memory" not in args.skip:
        bench_memory(args.rows)


if __name__ == "__main__":
    main()

"""p-MOS labelling throughput of the embedded MOS model on this machine.

Usage: python benchmarks/bench_mos_label.py --manifest CORPUS/manifest.jsonl [--model DIR]
       [--clips 200]

Labels a copy of the first CLIPS rows with batch sizes 1 and 16, and times decoding the same
audio alone as the reference (the floor any labeller pays). Without --model a randomly
initialised embedded model is used: the speed does not depend on the weights. Prints clips
per second, real-time factor, the ratio to decoding alone, and the process's peak memory.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mos_predictor.config import MosModelConfig
from mos_predictor.label import label_manifest
from mos_predictor.models import build_mos_model, load_mos_model
from qamdt.audio_io import load_audio
from qamdt.manifest import read_manifest, write_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--clips", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = (
        load_mos_model(args.model)
        if args.model
        else build_mos_model(MosModelConfig.from_dict({"kind": "embedded"}))
    )
    records = [r.replace(pmos=None) for r in read_manifest(args.manifest)[: args.clips]]
    audio_seconds = sum(r.duration or 0.0 for r in records)

    start = time.perf_counter()
    for record in records:
        load_audio(record.audio_path(args.manifest.parent))
    decode = time.perf_counter() - start

    rows = [("decode only (reference)", decode)]
    for batch_size in (1, 16):
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "manifest.jsonl"
            write_manifest(copy, records, source_dir=args.manifest.parent)
            start = time.perf_counter()
            label_manifest(copy, model, batch_size=batch_size, progress=False)
            rows.append((f"label, batch {batch_size}", time.perf_counter() - start))
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"p-MOS labelling, {len(records)} clips ({audio_seconds / 60:.1f} min of audio), "
          f"{torch.get_num_threads()} threads, model {model.config.kind}")  # fmt: skip
    print(f"{'run':<26}{'seconds':>9}{'clips/s':>9}{'x real time':>13}{'vs decode':>11}")
    for name, seconds in rows:
        print(
            f"{name:<26}{seconds:>9.2f}{len(records) / seconds:>9.1f}"
            f"{audio_seconds / seconds:>13.0f}{seconds / decode:>10.2f}x"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()

"""Training time of the embedded CLAP scorer and captioner, float32 against bfloat16.

Usage: python benchmarks/bench_caption_models.py --manifest RUN/corpus/manifest.jsonl
[--clap-epochs 5] [--captioner-epochs 22] [--threads 1]

Trains each model once per ``mixed_precision`` ("no", then "bf16") on the corpus, with the
demo's epochs and batch sizes and one thread by default (as the demo trains them beside
other stages), and prints the training seconds (epochs only: the data preparation is the
same for both), the speed against float32 and the test-split quality of the saved model:
text-to-audio recall for the CLAP scorer, the generated captions' overall tag F1 for the
captioner. bfloat16 only pays on a CPU that computes it natively (AVX-512 BF16 or AMX).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from captioning.train_captioner import train_embedded_captioner
from captioning.train_clap import train_embedded_clap
from qamdt.training.precision import native_bfloat16

PRECISIONS = ("no", "bf16")


def clap_row(manifest: Path, out: Path, epochs: int, precision: str) -> tuple[float, str]:
    metrics = train_embedded_clap(
        manifest, out, epochs=epochs, batch_size=64, seed=0, mixed_precision=precision, log=None
    )
    test = metrics["test"]
    return metrics["train_seconds"], f"t2a R@1 {test['t2a_r1']:.3f}, R@5 {test['t2a_r5']:.3f}"


def captioner_row(manifest: Path, out: Path, epochs: int, precision: str) -> tuple[float, str]:
    metrics = train_embedded_captioner(
        manifest,
        out,
        epochs=epochs,
        batch_size=32,
        seed=0,
        mixed_precision=precision,
        num_threads=None,
    )
    f1 = metrics["test"]["generated"]["overall"]["f1"]
    return metrics["train_seconds"], f"generated captions' F1 {f1:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True, help="corpus manifest")
    parser.add_argument("--clap-epochs", type=int, default=5)
    parser.add_argument("--captioner-epochs", type=int, default=22)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = (
        ("CLAP scorer", clap_row, args.clap_epochs),
        ("captioner", captioner_row, args.captioner_epochs),
    )
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, train, epochs in models:
            for precision in PRECISIONS:
                out = Path(scratch) / f"{name}-{precision}"
                seconds, quality = train(args.manifest, out, epochs, precision)
                rows.append((name, epochs, precision, seconds, quality))
    print(
        f"{args.manifest}, {args.threads} thread(s), native bfloat16: "
        f"{native_bfloat16(torch.device('cpu'))}"
    )
    print(f"{'model':<12} {'epochs':>6} {'precision':>9} {'train s':>8} {'speed':>6}  test")
    reference = {}
    for name, epochs, precision, seconds, quality in rows:
        reference.setdefault(name, seconds)
        speed = reference[name] / seconds
        print(f"{name:<12} {epochs:>6} {precision:>9} {seconds:>8.1f} {speed:>5.2f}x  {quality}")


if __name__ == "__main__":
    main()

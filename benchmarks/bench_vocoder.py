"""Vocoder speed: one batched HiFi-GAN call against ``Vocoder``'s clip-by-clip CPU path.

Usage: python benchmarks/bench_vocoder.py [--seconds 5] [--batches 1 5 10] [--repeats 2]

Times the embedded HiFi-GAN (universal) on random log-mels of ``--seconds`` seconds. The
reference row calls the network once on the whole batch; ``Vocoder.__call__`` runs it one
clip at a time on CPU (and batched on GPUs). Both give the same samples; the table prints
seconds per clip, the real-time factor and the speed-up over the batched call. A second
table times one clip with the vocoder's channels-last convolutions against plain
``conv1d`` (outputs agree to about 1e-6).
"""

from __future__ import annotations

import argparse
import time

import torch

from qamdt.models.vocoder import ChannelsLastConv1d, Vocoder


def seconds_per_clip(fn, mel: torch.Tensor, repeats: int) -> float:
    fn(mel[:1])  # warm-up: allocation and kernel selection are not timed
    start = time.perf_counter()
    for _ in range(repeats):
        fn(mel)
    return (time.perf_counter() - start) / repeats / len(mel)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    vocoder = Vocoder.embedded()
    frames = round(args.seconds * vocoder.sample_rate / vocoder.hop_length)
    generator = torch.Generator().manual_seed(0)
    where = f"CPU ({torch.get_num_threads()} threads)"
    print(f"embedded HiFi-GAN, {args.seconds:g} s clips ({frames} frames), {where}")
    print(f"{'batch':>5s} {'batched s/clip':>15s} {'clip-by-clip s/clip':>20s} "
          f"{'RTF':>6s} {'speed-up':>9s}")  # fmt: skip
    for batch in args.batches:
        mel = torch.randn(batch, frames, vocoder.n_mels, generator=generator) - 5.0
        batched = seconds_per_clip(lambda m: vocoder.model(m), mel, args.repeats)
        looped = seconds_per_clip(vocoder, mel, args.repeats)
        print(f"{batch:5d} {batched:15.2f} {looped:20.2f} {looped / args.seconds:6.2f} "
              f"{batched / looped:8.2f}x")  # fmt: skip
    mel = torch.randn(1, frames, vocoder.n_mels, generator=generator) - 5.0
    fast = seconds_per_clip(vocoder, mel, args.repeats)
    fast_out = vocoder(mel)
    for module in vocoder.modules():
        if isinstance(module, ChannelsLastConv1d):
            module.__class__ = torch.nn.Conv1d  # back to the plain layer, same parameters
    plain = seconds_per_clip(vocoder, mel, args.repeats)
    gap = (vocoder(mel) - fast_out).abs().max().item()
    print(f"one clip: conv1d {plain:.2f} s, channels-last {fast:.2f} s, "
          f"{plain / fast:.2f}x, max difference {gap:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()

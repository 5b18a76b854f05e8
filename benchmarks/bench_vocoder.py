"""Vocoder speed: one batched HiFi-GAN call against ``Vocoder``'s clip-by-clip CPU path.

Usage: python benchmarks/bench_vocoder.py [--seconds 5] [--batches 1 5 10] [--repeats 2]
       [--run RUN --clips 20]

Times the embedded HiFi-GAN (universal) on random log-mels of ``--seconds`` seconds. The
reference row calls the network once on the whole batch; ``Vocoder.__call__`` runs it one
clip at a time on CPU (and batched on GPUs). Both give the same samples; the table prints
seconds per clip, the real-time factor and the speed-up over the batched call. A second
table compares precisions: float32 (the reference), the residual blocks in bfloat16
(``Vocoder.set_dtype``: the rest and the sums between convolutions stay float32), and the
whole network in bfloat16. With ``--run`` (a finished ``qamdt demo`` folder) it vocodes
the log-mels of ``--clips`` level-5 clips that the run's pipeline generates for the
captions of its test split, scores them with the run's MOS model, and prints each
precision's p-MOS and its difference from float32, paired per clip, with its standard
error. A last table times one clip with the vocoder's channels-last convolutions against
plain ``conv1d`` (outputs agree to about 1e-6).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from qamdt.models.vocoder import ChannelsLastConv1d, Vocoder


def seconds_per_clip(fn, mel: torch.Tensor, repeats: int) -> float:
    fn(mel[:1])  # warm-up: allocation and kernel selection are not timed
    start = time.perf_counter()
    for _ in range(repeats):
        fn(mel)
    return (time.perf_counter() - start) / repeats / len(mel)


def generated_mels(run: Path, clips: int, seconds: float) -> list[torch.Tensor]:
    """Level-5 log-mels of ``run``'s pipeline for the captions of its first test clips."""
    from qamdt.generation.pipeline import QAMDTPipeline

    rows = [json.loads(line) for line in (run / "corpus" / "manifest.jsonl").open()]
    prompts = [r["meta"]["true_caption"] for r in rows if r["split"] == "test"][:clips]
    pipeline = QAMDTPipeline.from_pretrained(run / "models" / "pipeline")
    mels = []
    for start in range(0, len(prompts), 5):
        out = pipeline(prompts[start : start + 5], quality_level=5, audio_length_in_s=seconds,
                       generator=start, output_type="mel")  # fmt: skip
        mels += list(out.mels.split(1))
    return mels


def compare_precisions(args, vocoder: Vocoder, frames: int) -> None:
    """Seconds per clip and (with --run) the p-MOS of float32, mixed and bfloat16 vocoders."""
    mixed = copy.deepcopy(vocoder).set_dtype(torch.bfloat16)
    whole = copy.deepcopy(vocoder.model)
    for module in whole.modules():  # no float32 boundaries: 16-bit sums between layers
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    whole.to(torch.bfloat16)
    rows = {
        "float32 (reference)": vocoder,
        "bfloat16 residual blocks": mixed,
        "bfloat16 throughout": lambda mel: whole(mel.to(torch.bfloat16)).float(),
    }
    if args.run is None:
        mels = list(torch.randn(args.clips, 1, frames, vocoder.n_mels) - 5.0)
        scores = None
    else:
        from mos_predictor.models import load_mos_model

        mels = generated_mels(Path(args.run), args.clips, args.seconds)
        mos = load_mos_model(Path(args.run) / "models" / "mos")
        scores = {}
    seconds = {}
    for name, model in rows.items():
        model(mels[0])  # warm-up
        start = time.perf_counter()
        out = [model(mel)[0].numpy() for mel in mels]
        seconds[name] = (time.perf_counter() - start) / len(mels)
        if scores is not None:
            scores[name] = [d["omq"] for d in mos.predict(out, vocoder.sample_rate)]
    what = "random log-mels" if scores is None else f"level-5 clips of {args.run}/models/pipeline"
    print(f"\nprecision, {len(mels)} {what}, {args.seconds:g} s each")
    print(
        f"{'vocoder':30s} {'s/clip':>7s} {'vs ref':>7s} {'p-MOS':>6s} {'- float32':>9s} {'SE':>6s}"
    )
    reference = seconds["float32 (reference)"]
    for name in rows:
        time_cols = f"{seconds[name]:7.3f} {reference / seconds[name]:6.2f}x"
        if scores is None:
            print(f"{name:30s} {time_cols}")
            continue
        value = np.asarray(scores[name])
        diff = value - np.asarray(scores["float32 (reference)"])
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        print(f"{name:30s} {time_cols} {value.mean():6.3f} {diff.mean():+9.3f} {se:6.3f}")


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--run", default=None, help="a finished qamdt demo folder (p-MOS)")
    parser.add_argument("--clips", type=int, default=20, help="clips of the precision table")
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
    compare_precisions(args, vocoder, frames)
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

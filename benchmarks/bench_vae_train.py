"""The mel VAE's training step on the CPU: where its time goes; channels-last against contiguous.

Usage: python benchmarks/bench_vae_train.py [--batch-size 16] [--frames 128] [--steps 5]
       [--threads 1]

Times the demo's VAE training step (the ``embedded`` architecture of
``configs/vae/embedded.yaml``, randomly initialised; forward, the loss of
:func:`qamdt.training.vae_train.vae_loss`, backward and an AdamW step) on random log-mels,
float32, in the default (contiguous) memory format, the reference, and with the model in
the channels-last format, the two alternating step by step in one process. Then one
profiled step of the reference: the share of the step in each kind of operation.
The demo trains the VAE on one thread beside the small trainings, hence ``--threads 1``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import yaml

from qamdt.audio_spec import get_audio_spec
from qamdt.models.vae import LatentVAE
from qamdt.training.vae_train import vae_loss

# Operation kinds of the profile table, by the aten operator names they cover.
OPERATIONS = {
    "convolution backward": ("aten::convolution_backward",),
    "convolution forward": ("aten::mkldnn_convolution", "aten::_convolution"),
    "group norm": ("aten::native_group_norm", "aten::native_group_norm_backward"),
    "SiLU": ("aten::silu", "aten::silu_backward"),
}


def make_step(vae: LatentVAE, mel: torch.Tensor):
    """One training step of ``vae`` on ``mel`` as a closure."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)

    def step() -> None:
        loss, _ = vae_loss(vae(mel), mel, kl_weight=1e-6, spectral_weight=2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=128, help="frames per crop")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with open("configs/vae/embedded.yaml", encoding="utf-8") as handle:
        reference = LatentVAE.from_config(yaml.safe_load(handle)["model"])
    channels_last = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    mel = torch.randn(args.batch_size, args.frames, get_audio_spec("embedded").n_mels) - 4.0
    steps = {"contiguous (reference)": make_step(reference, mel),
             "channels-last": make_step(channels_last, mel)}  # fmt: skip
    for step in steps.values():
        step()  # warm-up: allocation and kernel selection are not timed
    seconds = dict.fromkeys(steps, 0.0)
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name] += time.perf_counter() - start

    print(f"VAE training step, batch {args.batch_size} of {args.frames} frames, float32, CPU "
          f"({args.threads} thread(s)), {args.steps} steps each, alternating")  # fmt: skip
    base = seconds["contiguous (reference)"]
    print(f"{'memory format':24s} {'s/step':>7s} {'vs ref':>7s}")
    for name, total in seconds.items():
        print(f"{name:24s} {total / args.steps:7.3f} {base / total:6.2f}x")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        steps["contiguous (reference)"]()
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\nwhere a reference step's time goes ({total / 1e6:.3f} s profiled)")
    covered = 0.0
    for kind, names in OPERATIONS.items():
        share = sum(e.self_cpu_time_total for e in events if e.key in names) / total
        covered += share
        print(f"{kind:24s} {100 * share:6.1f}%")
    print(f"{'everything else':24s} {100 * (1 - covered):6.1f}%")


if __name__ == "__main__":
    main()

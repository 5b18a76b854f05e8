"""VAE speed on CPU: one batched call against ``LatentVAE``'s clip-by-clip path.

Usage: python benchmarks/bench_vae.py [--vae DIR] [--seconds 10] [--batches 1 8 64] [--repeats 2]

Times encoding (posterior mean) and decoding of random log-mels of ``--seconds`` seconds.
The reference rows call the diffusers ``AutoencoderKL`` once on the whole batch;
``LatentVAE.encode`` / ``decode`` run it one clip at a time on the CPU outside autograd.
Both give the same numbers; the table prints milliseconds per clip and the speed-up over
the batched call. Without ``--vae`` the model is the ``embedded`` preset's architecture,
randomly initialised (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import time

import torch

from qamdt.audio_spec import get_audio_spec
from qamdt.models.vae import LatentVAE


def ms_per_clip(fn, batch: torch.Tensor, repeats: int) -> float:
    fn(batch[:1])  # warm-up: allocation and kernel selection are not timed
    start = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    return (time.perf_counter() - start) / repeats / len(batch) * 1000.0


def load_vae(folder: str | None) -> LatentVAE:
    if folder:
        return LatentVAE.from_pretrained(folder)
    import yaml

    with open("configs/vae/embedded.yaml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    return LatentVAE.from_config(config["model"])


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vae", default=None, help="a VAE folder (default: embedded, random)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    vae = load_vae(args.vae).eval()
    spec = get_audio_spec("embedded")
    factor = vae.downsample_factor
    frames = round(args.seconds * spec.sample_rate / spec.hop_length) // factor * factor
    generator = torch.Generator().manual_seed(0)
    autoencoder = vae.autoencoder
    print(f"VAE, {args.seconds:g} s clips ({frames} frames), CPU ({torch.get_num_threads()} "
          "threads), ms per clip")  # fmt: skip
    print(f"{'batch':>5s} {'encode batched':>15s} {'clip by clip':>13s} {'speed-up':>9s} "
          f"{'decode batched':>15s} {'clip by clip':>13s} {'speed-up':>9s}")  # fmt: skip
    for batch in args.batches:
        mel = torch.randn(batch, frames, spec.n_mels, generator=generator) - 4.0
        latents = vae.encode(mel[:1]).expand(batch, -1, -1, -1).contiguous()
        enc_ref = ms_per_clip(lambda m: autoencoder.encode(m.unsqueeze(1)).latent_dist.mean,
                              mel, args.repeats)  # fmt: skip
        enc = ms_per_clip(vae.encode, mel, args.repeats)
        dec_ref = ms_per_clip(lambda z: autoencoder.decode(z).sample, latents, args.repeats)
        dec = ms_per_clip(vae.decode, latents, args.repeats)
        print(f"{batch:5d} {enc_ref:15.1f} {enc:13.1f} {enc_ref / enc:8.2f}x "
              f"{dec_ref:15.1f} {dec:13.1f} {dec_ref / dec:8.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

"""Generation speed of the QA-MDT pipeline: seconds per 10 s of audio, real-time factor.

Usage: python benchmarks/bench_generate.py [--config configs/mdt/embedded.yaml]
       [--vae-config configs/vae/embedded.yaml] [--batch 1] [--precision no|bf16]

Builds the pipeline of a config with random weights (speed does not depend on them): the
transformer of the config, a VAE of the VAE config, the bundled MiniLM text encoder (or a
random T5 of FLAN-T5-large's width for the paper preset), the vocoder (HiFi-GAN universal
for `embedded`; a random HiFi-GAN of AudioLDM2's shape for `paper`). Times one 10 s clip
per prompt with classifier-free guidance (both branches in one batch) for the paper's
sampler (DDIM, 200 steps, the reference row) and DPM-Solver++ with 25 steps, split into
sampling, VAE decoding and vocoding. Peak memory: CPU resident set size (for the whole
process) or peak CUDA allocation.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from qamdt.audio_spec import get_audio_spec
from qamdt.diffusion.schedule import DiffusionConfig, build_train_scheduler
from qamdt.generation.pipeline import QAMDTPipeline
from qamdt.models.model_info import read_model_config
from qamdt.models.transformer import QualityMDTTransformer
from qamdt.models.vae import LatentVAE
from qamdt.training.mdt_config import read_yaml

AUDIOLDM2_VOCODER = {
    "model_in_dim": 64,
    "sampling_rate": 16000,
    "upsample_initial_channel": 1024,
    "upsample_rates": [5, 4, 2, 2, 2],
    "upsample_kernel_sizes": [16, 16, 8, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "normalize_before": False,
}


def build_pipeline(config_path: str, vae_config_path: str | None) -> QAMDTPipeline:
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    from qamdt.models.text_encoder import TextEncoder
    from qamdt.models.vocoder import Vocoder

    train = read_yaml(config_path)
    audio = train.get("audio", "embedded")
    torch.manual_seed(0)
    model_values = read_model_config(config_path)
    transformer = QualityMDTTransformer(**model_values)
    if audio == "paper":
        vae = LatentVAE.from_config(
            {
                "latent_channels": 8,
                "block_out_channels": [128, 256, 512],
                "layers_per_block": 2,
                "norm_num_groups": 32,
            }
        )
        vocoder = Vocoder("paper", SpeechT5HifiGan(SpeechT5HifiGanConfig(**AUDIOLDM2_VOCODER)))
        from transformers import T5Config, T5EncoderModel

        minilm = TextEncoder.from_pretrained("embedded")
        t5_config = T5Config(
            d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
            vocab_size=30522, feed_forward_proj="gated-gelu",
        )  # fmt: skip
        t5 = T5EncoderModel(t5_config)
        text_encoder = TextEncoder(t5, minilm.tokenizer, 128, "t5")
    else:
        values = read_yaml(vae_config_path).get("model", {}) if vae_config_path else {}
        vae = LatentVAE.from_config(values)
        vocoder = Vocoder.embedded()
        text_encoder = TextEncoder.from_pretrained("embedded")
    return QAMDTPipeline(
        transformer, vae, vocoder, text_encoder, build_train_scheduler(DiffusionConfig()), audio
    )


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/mdt/embedded.yaml")
    parser.add_argument("--vae-config", default="configs/vae/embedded.yaml")
    parser.add_argument("--batch", type=int, default=1, help="prompts per call")
    parser.add_argument("--precision", choices=("no", "bf16"), default="no")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = build_pipeline(args.config, args.vae_config).to(device)
    if args.precision == "bf16":
        pipeline.transformer.to(torch.bfloat16)
    spec = get_audio_spec(pipeline.spec)
    seconds = 10.0
    prompts = ["a string quartet plays a slow piece in a minor key"] * args.batch
    # Warm-up at full length, so allocation and kernel selection are not timed.
    warm = pipeline(prompts, num_inference_steps=1, audio_length_in_s=seconds, output_type="mel")
    pipeline.vocoder(warm.mels)
    rows = []
    for name, sampler, steps in (
        ("DDIM 200 (reference)", "ddim", 200),
        ("DPM-Solver++ 25", "dpmsolver++", 25),
    ):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out, sample_s = timed(
            lambda sampler=sampler, steps=steps: pipeline(
                prompts, num_inference_steps=steps, scheduler=sampler,
                audio_length_in_s=seconds, output_type="latent", generator=0,
            )
        )  # fmt: skip
        mels, decode_s = timed(lambda out=out: pipeline.vae.decode(out.latents).float())
        _, vocode_s = timed(lambda mels=mels: pipeline.vocoder(mels))
        total = (sample_s + decode_s + vocode_s) / args.batch
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(
            (name, sample_s / args.batch, decode_s / args.batch, vocode_s / args.batch, total, peak)
        )

    where = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"generation of {seconds:.0f} s clips, {args.config} ({spec.name}), batch {args.batch}, "
          f"precision {args.precision}, {where}, random weights")  # fmt: skip
    print(f"{'sampler':22s} {'sample s':>9s} {'VAE s':>7s} {'vocoder s':>10s} {'s per 10 s':>11s} "
          f"{'RTF':>6s} {'vs ref':>7s} {'peak MiB':>9s}")  # fmt: skip
    reference = rows[0][4]
    for name, sample_s, decode_s, vocode_s, total, peak in rows:
        print(f"{name:22s} {sample_s:9.2f} {decode_s:7.2f} {vocode_s:10.2f} {total:11.2f} "
              f"{total / seconds:6.2f} {reference / total:6.2f}x {peak:9.0f}")  # fmt: skip


if __name__ == "__main__":
    main()

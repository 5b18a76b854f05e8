"""Generation speed of the QA-MDT pipeline: seconds per 10 s of audio, real-time factor.

Usage: python benchmarks/bench_generate.py [--config configs/mdt/embedded.yaml]
       [--vae-config configs/vae/embedded.yaml] [--batch 1]
       [--torch-dtype float32|bfloat16|float16|vocoder=bfloat16] [--compile] [--ddim-steps 200]
       [--dpm-steps 25] [--seconds 10] [--vae-chunk FRAMES] [--cpu-offload]
       [--repeats N] [--vocoder-clips N]

Builds the pipeline of a config with random weights (speed does not depend on them): the
transformer of the config, a VAE of the VAE config, the bundled MiniLM text encoder (or a
random T5 of FLAN-T5-large's width for the paper preset), the vocoder (HiFi-GAN universal
for `embedded`; a random HiFi-GAN of AudioLDM2's shape for `paper`). Times one 10 s clip
per prompt with classifier-free guidance (both branches in one batch) for the paper's
sampler (DDIM, 200 steps, the reference row) and DPM-Solver++ with 25 steps, split into
sampling, VAE decoding and vocoding. Peak memory: CPU resident set size (for the whole
process, so the largest of the rows so far) or peak CUDA allocation.

The whole pipeline runs in --torch-dtype (transformer, VAE, vocoder, text encoder), or the
models it names (`--torch-dtype vocoder=bfloat16`: the vocoder alone in bfloat16). With
--compile the same rows run on a compiled twin of the pipeline (``pipeline.compile()``,
CUDA graphs on CUDA), alternating with the eager one, side by side; the cold compile time
(the first calls) and the largest difference between eager and compiled latents of the
same seed are printed too. --repeats N times every row N times and keeps the fastest.
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import torch

from qamdt.audio_spec import get_audio_spec
from qamdt.config import read_yaml
from qamdt.diffusion.schedule import DiffusionConfig, build_train_scheduler
from qamdt.generation.pipeline import QAMDTPipeline
from qamdt.models.model_info import read_model_config
from qamdt.models.transformer import QualityMDTTransformer
from qamdt.models.vae import LatentVAE

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


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_up(pipeline, prompts, seconds: float) -> None:
    """One call at full length: allocation, kernel selection (and compiling) not timed."""
    warm = pipeline(prompts, num_inference_steps=2, audio_length_in_s=seconds, output_type="mel")
    pipeline.vocoder(warm.mels)


def measure(pipeline, prompts, seconds: float, samplers, device: str) -> list[dict]:
    """One row per sampler: seconds of sampling, decoding, vocoding per prompt; peak MiB."""
    rows = []
    for name, sampler, steps in samplers:
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
        batch = len(prompts)
        rows.append(
            {
                "name": name,
                "sample": sample_s / batch,
                "decode": decode_s / batch,
                "vocode": vocode_s / batch,
                "total": (sample_s + decode_s + vocode_s) / batch,
                "peak": peak_mib(device),
                "latents": out.latents.float().cpu(),
            }
        )
    return rows


def fastest(repeats: list[list[dict]]) -> list[dict]:
    """Per sampler, the repeat with the shortest total (the least disturbed by other jobs)."""
    return [min(rows, key=lambda row: row["total"]) for rows in zip(*repeats, strict=True)]


@torch.no_grad()
def vocoder_clips(clips: int, seconds: float) -> None:
    """The embedded HiFi-GAN over ``clips`` clips, eager against compiled from a cold start.

    What the demo's generate stage does (one clip at a time, all of one length): the
    compiled total includes the compile (run with an empty TORCHINDUCTOR_CACHE_DIR for a
    cold cache). Eager and compiled calls alternate, so a load change hits both alike.
    """
    from qamdt.models.vocoder import Vocoder

    eager, compiled = Vocoder.embedded(), Vocoder.embedded()
    frames = round(seconds * eager.sample_rate / eager.hop_length)
    mel = torch.randn(1, frames, eager.n_mels, generator=torch.Generator().manual_seed(0)) - 5
    compiled.model.compile(dynamic=False)
    _, compile_s = timed(lambda: compiled(mel))
    times = {"eager": [], "compiled": []}
    for _ in range(clips):
        for name, vocoder in (("eager", eager), ("compiled", compiled)):
            times[name].append(timed(lambda vocoder=vocoder: vocoder(mel))[1])
    gap = float((eager(mel) - compiled(mel)).abs().max())
    eager_s, compiled_s = (sum(times[name]) / clips for name in ("eager", "compiled"))
    print(f"embedded HiFi-GAN, {clips} clips of {seconds:g} s, CPU "
          f"({torch.get_num_threads()} threads)")  # fmt: skip
    print(f"eager {eager_s:.3f} s/clip; compiled {compiled_s:.3f} s/clip "
          f"({eager_s / compiled_s:.2f}x); cold compile {compile_s:.1f} s; "
          f"max |difference| {gap:.1e}")  # fmt: skip
    for total in (clips, 140):
        print(f"{total} clips: eager {eager_s * total:.1f} s, compiled with its compile "
              f"{compile_s + compiled_s * (total - 1):.1f} s")  # fmt: skip


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/mdt/embedded.yaml")
    parser.add_argument("--vae-config", default="configs/vae/embedded.yaml")
    parser.add_argument("--batch", type=int, default=1, help="prompts per call")
    parser.add_argument(
        "--torch-dtype",
        default="float32",
        help="float32, bfloat16, float16, or per model: vocoder=bfloat16",
    )
    parser.add_argument("--compile", action="store_true", help="also time the compiled pipeline")
    parser.add_argument("--compile-mode", default="auto", help="torch.compile mode")
    parser.add_argument("--ddim-steps", type=int, default=200, help="steps of the reference row")
    parser.add_argument("--dpm-steps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per clip")
    parser.add_argument("--repeats", type=int, default=1, help="rows timed N times, fastest kept")
    parser.add_argument("--vae-chunk", type=int, default=None, help="chunked VAE decoding")
    parser.add_argument("--cpu-offload", action="store_true", help="model CPU offload (CUDA)")
    parser.add_argument(
        "--vocoder-clips", type=int, default=None, help="only: the demo's vocoder, N clips"
    )
    args = parser.parse_args()
    if args.vocoder_clips:
        vocoder_clips(args.vocoder_clips, args.seconds)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline = build_pipeline(args.config, args.vae_config)
    pipeline.to(dtype=args.torch_dtype)
    if args.cpu_offload:
        pipeline.enable_model_cpu_offload(device)
    else:
        pipeline.to(device)
    if args.vae_chunk:
        pipeline.enable_vae_chunking(args.vae_chunk)
    spec = get_audio_spec(pipeline.spec)
    seconds = args.seconds
    prompts = ["a string quartet plays a slow piece in a minor key"] * args.batch
    samplers = (
        (f"DDIM {args.ddim_steps} (reference)", "ddim", args.ddim_steps),
        (f"DPM-Solver++ {args.dpm_steps}", "dpmsolver++", args.dpm_steps),
    )
    warm_up(pipeline, prompts, seconds)
    compiled, compile_s, agreement = None, None, None
    if args.compile:
        # An eager twin, so eager and compiled calls can alternate: on a shared machine a
        # change of load then hits both alike.
        twin = copy.deepcopy(pipeline)
        twin.compile(mode=args.compile_mode)
        _, compile_s = timed(lambda: warm_up(twin, prompts, seconds))
    runs = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        runs["eager"].append(measure(pipeline, prompts, seconds, samplers, device))
        if args.compile:
            runs["compiled"].append(measure(twin, prompts, seconds, samplers, device))
    eager = fastest(runs["eager"])
    if args.compile:
        compiled = fastest(runs["compiled"])
        agreement = max(
            float((a["latents"] - b["latents"]).abs().max())
            for a, b in zip(eager, compiled, strict=True)
        )

    where = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"generation of {seconds:g} s clips, {args.config} ({spec.name}), batch {args.batch}, "
          f"{args.torch_dtype}, {where}, random weights")  # fmt: skip
    header = f"{'sampler':26s} {'run':9s} {'sample s':>9s} {'VAE s':>7s} {'vocoder s':>10s} "
    header += f"{'s per clip':>11s} {'RTF':>6s} {'vs ref':>7s} {'vs eager':>9s} {'peak MiB':>9s}"
    print(header)
    reference = eager[0]["total"]
    runs = [("eager", eager)] + ([("compiled", compiled)] if compiled else [])
    for index in range(len(samplers)):
        for run, rows in runs:
            row = rows[index]
            print(f"{row['name']:26s} {run:9s} {row['sample']:9.3f} {row['decode']:7.3f} "
                  f"{row['vocode']:10.3f} {row['total']:11.3f} {row['total'] / seconds:6.3f} "
                  f"{reference / row['total']:6.2f}x "
                  f"{eager[index]['total'] / row['total']:8.2f}x {row['peak']:9.0f}")  # fmt: skip
    if compiled:
        print(f"compile (cold, first calls at this length): {compile_s:.1f} s; "
              f"largest |eager - compiled| latent difference: {agreement:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()

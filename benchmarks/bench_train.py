"""Training throughput and peak memory of the quality-aware MDT.

Usage: python benchmarks/bench_train.py [--config configs/mdt/embedded.yaml] [--batch 16]
       [--steps 5] [--precision no|bf16|fp16] [--torch-dtype float32|bfloat16]
       [--variants all|reference] [--compile] [--optimizer fused|foreach]
       [--sample-size FRAMES BANDS] [--side-by-side N] [--vary]

Times full optimiser steps (forward, backward, AdamW, EMA update) on random latents and
text states of the config's shapes, after one warm-up step. Each variant runs in its own
process so its peak memory is its own (CPU: peak resident set size; CUDA: peak allocated).
The reference row is the released training recipe (one masked pass, sin-cos positions,
SDPA); the other rows change one thing each. Model FLOPs per sample are 3x the unmasked
forward FLOPs of ``qamdt model info`` (the usual 6 x params x tokens convention, with
attention); MFU divides achieved model FLOP/s by --peak-tflops when given.

--precision trains float32 weights under autocast (as ``mixed_precision`` of a training
config); --torch-dtype bfloat16 keeps the weights themselves in bfloat16 (pure bf16). With
--compile each variant also runs with the model compiled (``compile_for_training``, as
``compile: true`` in a training config) in its own process, printed beside the eager row
with the ratio; the compile time (the warm-up steps) is reported separately. The
optimiser is the training's fused AdamW (``--optimizer foreach``: PyTorch's default).

--side-by-side N also runs N copies of the reference at once, each in its own process with
1/N of the threads, as the demo trains its two MDTs (``stage_processes``); its row gives
their summed samples/s against the reference's (with --compile, compiled copies too).
--sample-size sets the latent's frames and bands (the demo's 2.5 s excerpts: 54 20).

Every step has the same shapes unless --vary: then each masked step draws its mask ratio
from the config's ``mask_ratio_range`` and its caption length from half to all of
--text-length (seeded), as ``qamdt train``'s batches do, and compiled rows warm up for 8
steps instead of 3.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import time

import torch

from qamdt.models.model_info import approx_forward_flops, read_model_config
from qamdt.models.transformer import QualityMDTTransformer
from qamdt.training.mdt_train import compile_for_training, fused_adamw

VARIANTS = {
    "reference: masked pass, sincos, SDPA": {},
    "2D RoPE positions": {"model": {"position_encoding": "rope"}},
    "two-pass loss (masked + unmasked)": {"two_pass": True},
    "no masking": {"mask_ratio": 0.0},
    "gradient checkpointing": {"checkpointing": True},
    "xformers attention": {"model": {"attention_backend": "xformers"}, "cuda_only": True},
}


def run_variant(queue, values, change, batch, steps, precision, text_length, options) -> None:
    torch.manual_seed(0)
    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_values = {**values, "position_encoding": "sincos", **change.get("model", {})}
    weights = {"float32": torch.float32, "bfloat16": torch.bfloat16}[options["torch_dtype"]]
    model = QualityMDTTransformer(**model_values).to(device, weights).train()
    if change.get("checkpointing"):
        model.enable_gradient_checkpointing()
    if options["compile"]:
        compile_for_training(model)
    if options["optimizer"] == "fused":
        optimizer = fused_adamw(model.parameters(), lr=1e-4, weight_decay=0.0)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ema = [p.detach().clone() for p in model.parameters()]
    time_len, freq = model.config.sample_size
    latents = torch.randn(batch, model.config.in_channels, time_len, freq, device=device)
    latents = latents.to(weights)
    text = torch.randn(batch, text_length, model.config.text_dim, device=device, dtype=weights)
    levels = torch.randint(0, 6, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mask_ratio = change.get("mask_ratio", 0.4)
    draws = random.Random(0)

    def step():
        t = torch.randint(0, 1000, (batch,), device=device)
        ratio, states = mask_ratio, text
        if options["vary"] and mask_ratio:
            # As training batches come: each its own ratio and caption length.
            ratio = draws.uniform(*model.config.mask_ratio_range)
            states = text[:, : draws.randint(max(1, text_length // 2), text_length)].contiguous()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(latents, t, states, None, levels, mask_ratio=ratio)
            loss = (out.float() - latents).square().mean()
            if change.get("two_pass"):
                loss = (
                    loss
                    + (model(latents, t, states, None, levels).float() - latents).square().mean()
                )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1e-4)

    warm_start = time.perf_counter()
    # Compiling: the first steps see new mask ratios (kept-token counts) and recompile.
    for _ in range((8 if options["vary"] else 3) if options["compile"] else 1):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm_s = time.perf_counter() - warm_start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = (time.perf_counter() - start) / steps
    flops = 3 * approx_forward_flops(model, time_len, freq, text_length)
    queue.put(
        {
            "seconds_per_step": seconds,
            "peak_mib": peak,
            "model_flops_per_sample": flops,
            "warm_up_s": warm_s,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/mdt/embedded.yaml")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--text-length", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=None, help="hardware peak for MFU")
    parser.add_argument("--variants", choices=("all", "reference"), default="all")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--torch-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--compile", action="store_true", help="also time compiled models")
    parser.add_argument("--optimizer", choices=("fused", "foreach"), default="fused")
    parser.add_argument("--sample-size", type=int, nargs=2, metavar=("FRAMES", "BANDS"))
    parser.add_argument("--side-by-side", type=int, default=0, metavar="N")
    parser.add_argument(
        "--vary", action="store_true", help="a mask ratio and caption length per step"
    )
    args = parser.parse_args()
    values = read_model_config(args.config)
    if args.sample_size:
        values["sample_size"] = list(args.sample_size)
    context = multiprocessing.get_context("spawn")
    threads = torch.get_num_threads()
    common = {"torch_dtype": args.torch_dtype, "optimizer": args.optimizer, "vary": args.vary}
    rows = []
    names = list(VARIANTS) if args.variants == "all" else list(VARIANTS)[:1]
    for name in names:
        change = VARIANTS[name]
        if change.get("cuda_only") and not torch.cuda.is_available():
            continue
        for compiled in (False, True) if args.compile else (False,):
            options = {**common, "compile": compiled}
            [result] = run_processes(context, 1, values, change, args, options)
            result["samples_per_second"] = args.batch / result["seconds_per_step"]
            rows.append({"variant": name, "run": "compiled" if compiled else "eager", **result})
    runs = (False, True) if args.compile else (False,)
    for compiled in runs if args.side_by_side > 1 else ():
        count = args.side_by_side
        options = {**common, "compile": compiled, "threads": max(1, threads // count)}
        results = run_processes(context, count, values, VARIANTS[names[0]], args, options)
        rows.append(
            {
                "variant": f"reference x{count} side by side ({options['threads']} thr)",
                "run": "compiled" if compiled else "eager",
                "seconds_per_step": max(r["seconds_per_step"] for r in results),
                "samples_per_second": sum(args.batch / r["seconds_per_step"] for r in results),
                "peak_mib": max(r["peak_mib"] for r in results),
                "model_flops_per_sample": results[0]["model_flops_per_sample"],
                "warm_up_s": max(r["warm_up_s"] for r in results),
            }
        )

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"MDT training step, {args.config}, batch {args.batch}, precision {args.precision}, "
        f"weights {args.torch_dtype}, {args.optimizer} AdamW, {device} ({threads} threads), "
        f"{args.steps} timed steps"
        + (", a mask ratio and caption length per step" if args.vary else "")
    )
    reference = rows[0]["samples_per_second"]
    eager = {row["variant"]: row["samples_per_second"] for row in rows if row["run"] == "eager"}
    header = f"{'variant':40s} {'run':9s} {'s/step':>8s} {'samples/s':>10s} {'vs ref':>7s} "
    header += f"{'vs eager':>9s} {'warm-up s':>10s} {'peak MiB':>9s} {'TFLOP/s':>8s}"
    print(header + (" MFU" if args.peak_tflops else ""))
    for row in rows:
        rate = row["samples_per_second"]
        tflops = rate * row["model_flops_per_sample"] / 1e12
        line = (
            f"{row['variant']:40s} {row['run']:9s} {row['seconds_per_step']:8.3f} {rate:10.2f} "
            f"{rate / reference:6.2f}x "
            f"{rate / eager[row['variant']]:8.2f}x {row['warm_up_s']:10.1f} "
            f"{row['peak_mib']:9.0f} {tflops:8.3f}"
        )
        if args.peak_tflops:
            line += f" {100 * tflops / args.peak_tflops:4.1f}%"
        print(line)
    gflops = rows[0]["model_flops_per_sample"] / 1e9
    print(f"model FLOPs per sample (3x unmasked forward): {gflops:.1f} GFLOP")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


def run_processes(context, count, values, change, args, options) -> list[dict]:
    """Runs ``count`` copies of one variant at once, each in its own process."""
    queue = context.Queue()
    processes = [
        context.Process(
            target=run_variant,
            args=(
                queue,
                values,
                change,
                args.batch,
                args.steps,
                args.precision,
                args.text_length,
                options,
            ),
        )  # fmt: skip
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    return results


if __name__ == "__main__":
    main()

"""Long-form generation: time of one long piece against separate clips, peak memory by length.

Usage: python benchmarks/bench_longform.py [--model OUT/models/pipeline]
       [--config configs/mdt/embedded.yaml] [--vae-config configs/vae/embedded.yaml]
       [--steps 10] [--lengths 10 60 180]

Rows, each generated in a fresh child process so that its peak resident set size is its
own (a process's peak never falls):

* six separate 10 s clips, one call each: the reference of the time ratio;
* one piece per ``--lengths`` value; beyond one window (the preset's clip, 10.03 s for
  ``embedded``) it is sampled in overlapping windows and decoded in windows
  (:mod:`qamdt.generation.modes`); the first length is the reference of the memory ratio.

The pipeline is a trained folder (``--model``) or, by default, the configs' models with
random weights (time and memory do not depend on the weights). Peak memory is the child's
peak RSS (weights and runtime included) and its growth over the RSS before generating.
The time ratio is of CPU seconds (user + system of the child): on a machine shared with
other jobs, wall time swings with their load and CPU time much less.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path

PROMPT = "a string quartet plays a slow piece in a minor key"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _row(args: argparse.Namespace, lengths: list[float], result) -> None:
    """Child process: build the pipeline, generate ``lengths`` one call each, report."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_generate import build_pipeline

    from qamdt.generation.pipeline import QAMDTPipeline

    torch.set_grad_enabled(False)
    if args.model:
        pipeline = QAMDTPipeline.from_pretrained(args.model)
    else:
        pipeline = build_pipeline(args.config, args.vae_config)
    pipeline(PROMPT, num_inference_steps=1, audio_length_in_s=1.0)  # warm-up
    before = _current_rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    windows = 0
    for seconds in lengths:
        out = pipeline(PROMPT, num_inference_steps=args.steps, audio_length_in_s=seconds,
                       generator=0)  # fmt: skip
        windows += len(out.mode_facts.get("windows", [[0, seconds]]))
        assert out.audios.shape[1] == round(seconds * pipeline.spec.sample_rate)
    cpu = time.process_time() - cpu_start
    result.put((time.perf_counter() - start, cpu, _rss_mib(), _rss_mib() - before, windows))


def run_row(
    args: argparse.Namespace, lengths: list[float]
) -> tuple[float, float, float, float, int]:
    context = multiprocessing.get_context("spawn")
    result = context.Queue()
    child = context.Process(target=_row, args=(args, lengths, result))
    child.start()
    value = result.get()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"the row {lengths} failed (exit {child.exitcode})")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="a pipeline folder (default: random)")
    parser.add_argument("--config", default="configs/mdt/embedded.yaml")
    parser.add_argument("--vae-config", default="configs/vae/embedded.yaml")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per window")
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 60.0, 180.0])
    args = parser.parse_args()
    clip = 10.0
    rows = [(f"6 x {clip:g} s clips (reference)", [clip] * 6)]
    rows += [(f"{seconds:g} s piece", [seconds]) for seconds in args.lengths]
    import torch

    model = args.model or f"{args.config} (random weights)"
    print(f"long-form generation, {model}, DDIM {args.steps} steps per window, "
          f"CPU ({torch.get_num_threads()} threads)")  # fmt: skip
    print(f"{'run':28s} {'windows':>7s} {'seconds':>8s} {'CPU s':>8s} {'CPU vs ref':>10s} "
          f"{'peak MiB':>9s} {'growth MiB':>11s} {'peak vs first':>13s}", flush=True)  # fmt: skip
    reference_cpu = first_peak = None
    # Rows print as they finish: a slow machine shows the first ones early.
    for index, (name, lengths) in enumerate(rows):
        seconds, cpu, peak, growth, windows = run_row(args, lengths)
        reference_cpu = reference_cpu or cpu
        if index == 1:
            first_peak = peak
        versus = f"{peak / first_peak:12.2f}x" if first_peak else f"{'':>13s}"
        print(f"{name:28s} {windows:7d} {seconds:8.1f} {cpu:8.1f} {cpu / reference_cpu:9.2f}x "
              f"{peak:9.0f} {growth:11.0f} {versus}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

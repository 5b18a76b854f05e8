"""How steady the embedded Frechet distance is under the draw of prompts, per feature kind.

Usage: python benchmarks/measure_frechet.py --run OUT --generated NAME=DIR [NAME=DIR ...]
       [--split valid] [--features frames pooled] [--resamples 200] [--seed 0]

The demo's checks against the baselines compare Frechet distances of 20 generated clips a
side to the clean held-out clips. This measures how much such a comparison can tell. For
each feature kind of :class:`qamdt.evaluation.embedders.ClapAudioEmbedder` it prints the
distance of every generated set (folders written by ``measure_guidance.py`` or ``qamdt
generate``, one clip per prompt) to the clean clips of ``--split`` of the run's manifest,
then, for each set against the first one, the gap and its spread when the prompts are drawn
again with replacement (the same draw for every set, the reference fixed): the standard
deviation of the gap, gap / deviation, and how often the first set stays ahead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a demo run folder")
    parser.add_argument("--generated", nargs="+", required=True, help="NAME=DIR, first is compared")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--features", nargs="+", default=["frames", "pooled"])
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from captioning.base import load_clap
    from qamdt.demo.common import manifest_path
    from qamdt.evaluation.embedders import ClapAudioEmbedder
    from qamdt.evaluation.inputs import (
        load_generated,
        load_reference,
        read_generated,
        read_reference,
    )
    from qamdt.evaluation.metrics import frechet_distance_of

    sets: dict[str, dict[str, object]] = {}
    for item in args.generated:
        name, _, folder = item.partition("=")
        clips, failures = read_generated(folder)
        if failures:
            raise SystemExit(f"{folder}: unreadable clips {failures[:1]}")
        sets[name] = {clip.prompt: clip for clip in clips}
    prompts = sorted(set.intersection(*(set(s) for s in sets.values())))
    refs, _ = read_reference(manifest_path(args.run), args.split, "clean")
    print(f"{len(prompts)} prompts in every set, {len(refs)} clean {args.split} clips")
    clap = load_clap(args.run / "models" / "clap")
    ref_audio = [load_reference(r) for r in refs]
    gen_audio = {
        name: [load_generated(by_prompt[p]) for p in prompts] for name, by_prompt in sets.items()
    }
    rng = np.random.default_rng(args.seed)
    draws = [rng.integers(0, len(prompts), len(prompts)) for _ in range(args.resamples)]
    names = list(sets)
    first = names[0]
    print(
        f"\n{'features':>9s} {'set':>12s} {'Frechet':>8s} {'gap':>7s} {'gap sd':>7s} "
        f"{'gap/sd':>7s} {f'{first} ahead':>12s} {'seconds':>8s}"
    )
    for kind in args.features:
        start = time.perf_counter()
        embedder = ClapAudioEmbedder(clap, features=kind)
        ref = np.concatenate(embedder.samples(*zip(*ref_audio, strict=True)))
        samples = {
            name: embedder.samples(*zip(*audio, strict=True)) for name, audio in gen_audio.items()
        }

        def distance(name: str, rows, samples=samples, ref=ref) -> float:
            return frechet_distance_of(np.concatenate([samples[name][i] for i in rows]), ref)

        observed = {name: distance(name, range(len(prompts))) for name in names}
        drawn = {name: np.array([distance(name, rows) for rows in draws]) for name in names}
        seconds = time.perf_counter() - start
        for name in names:
            line = f"{kind:>9s} {name:>12s} {observed[name]:8.2f}"
            if name != first:
                gaps = drawn[name] - drawn[first]
                gap = observed[name] - observed[first]
                line += (
                    f" {gap:7.2f} {gaps.std():7.2f} {gap / gaps.std():7.2f} "
                    f"{np.mean(gaps > 0):12.2f}"
                )
            else:
                line += f" {'':>7s} {'':>7s} {'':>7s} {'':>12s} {seconds:8.1f}"
            print(line)


if __name__ == "__main__":
    main()

"""Corpus build throughput: one worker against all cores, in the same process.

Usage: python benchmarks/bench_corpus.py [--clips 100]

Parsed scores are cached on disk after the first build (see
``qamdt.corpus.sources.load_piece_cached``); a warm-up build fills the cache first so both
timed runs see the same state. Prints clips per second, the ratio to the one-worker run,
and the projected time of a 1,000-clip build.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from qamdt.corpus.build import CorpusConfig, build_corpus


def timed_build(clips: int, workers: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        build_corpus(out, CorpusConfig(clips=clips, seed=seed), workers=workers, progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=100)
    args = parser.parse_args()
    timed_build(args.clips, os.cpu_count() or 1, seed=0)  # warm the score cache
    rows = []
    for workers in sorted({1, os.cpu_count() or 1}):
        seconds = timed_build(args.clips, workers, seed=0)
        rows.append((workers, seconds))
    reference = rows[0][1]
    print(f"corpus build, {args.clips} clips, warm score cache")
    print(f"{'workers':>8} {'seconds':>9} {'clips/s':>8} {'vs 1 worker':>12} {'1000 clips':>11}")
    for workers, seconds in rows:
        print(
            f"{workers:>8} {seconds:>9.2f} {args.clips / seconds:>8.2f} "
            f"{reference / seconds:>11.2f}x {1000 * seconds / args.clips:>10.0f}s"
        )


if __name__ == "__main__":
    main()

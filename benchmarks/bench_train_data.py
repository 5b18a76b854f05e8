"""Training data path of ``qamdt train``: how fast the loader delivers batches from a cache.

Usage: python benchmarks/bench_train_data.py --cache RUN/work/cache-mdt [--batch 16 32]
[--workers 0 2] [--batches 200]

Iterates the loader ``qamdt train`` builds
(``qamdt.training.mdt_batches.training_loader``: the seeded epoch order, the latent
cache's collate, pinned memory and non-blocking copies on CUDA, persistent workers) over a
finished latent cache (``qamdt cache``, or a demo run's ``work/cache-mdt``), moving every
batch's tensors to the training device, and prints batches, samples and megabytes per
second for each batch size and worker count, against the first worker count given (default
0: the loader in the training process). The first batches (workers starting, shards
opening) are not timed. A training step takes what the loader has ready, so the input
pipeline keeps a GPU busy as long as its samples/s stay above the step's.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from qamdt.training.latent_cache import LatentCacheDataset, collate_cached
from qamdt.training.mdt_batches import training_loader

WARM_UP_BATCHES = 3


def endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def time_loader(dataset, batch_size: int, workers: int, batches: int, device) -> dict:
    """Seconds, batches and bytes of ``batches`` timed batches moved to ``device``."""
    loader = endless(training_loader(dataset, collate_cached, batch_size, workers, seed=0))

    def moved(count: int) -> int:
        total = 0
        for batch in itertools.islice(loader, count):
            for value in batch.values():
                if torch.is_tensor(value):
                    value = value.to(device, non_blocking=device.type == "cuda")
                    total += value.numel() * value.element_size()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return total

    moved(WARM_UP_BATCHES)
    start = time.perf_counter()
    total = moved(batches)
    return {"seconds": time.perf_counter() - start, "batches": batches, "bytes": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a finished latent cache folder")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=200, help="timed batches per row")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = LatentCacheDataset(args.cache)
    shape = tuple(dataset[0]["latent_mean"].shape)
    print(
        f"training data path, {args.cache} ({len(dataset)} clips, latent {shape}), "
        f"to {device}, pinned memory {device.type == 'cuda'}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'batch':>5s} {'workers':>7s} {'batches/s':>10s} {'samples/s':>10s} "
        f"{'MB/s':>8s} {'KB/sample':>10s} {f'vs {args.workers[0]} workers':>13s}"
    )
    for batch_size in args.batch:
        reference = None
        for workers in args.workers:
            result = time_loader(dataset, batch_size, workers, args.batches, device)
            rate = result["batches"] / result["seconds"]
            reference = reference or rate
            samples = result["batches"] * batch_size
            print(
                f"{batch_size:5d} {workers:7d} {rate:10.1f} {rate * batch_size:10.1f} "
                f"{result['bytes'] / result['seconds'] / 1e6:8.1f} "
                f"{result['bytes'] / samples / 1e3:10.1f} {rate / reference:12.2f}x"
            )


if __name__ == "__main__":
    main()

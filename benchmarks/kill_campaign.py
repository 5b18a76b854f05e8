"""Kill campaign: SIGKILL each stage at seeded random moments, resume, compare with a clean run.

For every stage (``label``, ``refine``, ``cache``, ``train``, ``train-vae``, ``mos-train``)
each trial starts a fresh run folder, kills the stage after a random delay within its
uninterrupted duration, resumes it to the end and compares the outputs byte for byte with
an uninterrupted run's: the manifest for ``label`` and ``refine`` (and the rows lost), the
cache's shard files for ``cache``, the final weights for the trainers. ``ckpt`` kills the
MDT trainer inside checkpoint writes (at a random flush or rename of the save). It uses
the test suite's tiny data and models with known answers (``tests/kill_stages.py``).

    python benchmarks/kill_campaign.py --trials 20 --min-kills 20 --out /tmp/kills.json
    python benchmarks/kill_campaign.py --stages label refine --trials 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_kill_resume as T  # noqa: E402
import torch  # noqa: E402
from kill_stages import make_manifest, run_killed  # noqa: E402

from qamdt.manifest import read_manifest  # noqa: E402

STAGES = ("label", "refine", "cache", "train", "train-vae", "mos-train", "ckpt")


class _Factory:
    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=name, dir=self.root))
        return path


def _bytes_of(folder: Path, names) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}


class Campaign:
    """Shared tiny data and the reference outputs of uninterrupted runs."""

    def __init__(self, root: Path):
        self.root = root
        factory = _Factory(root)
        self.mdt_data = T.mdt_data.__wrapped__(factory)
        self.rated = T.rated.__wrapped__(factory)

    # --- one stage: (prepare a fresh folder, the stage's function, its outputs) ----------

    def label(self, folder: Path):
        path = make_manifest(folder)
        return path, lambda: T.label(path, delay=0.01), lambda: T.content(path)

    def refine(self, folder: Path):
        path = make_manifest(folder)
        T.label(path)
        return path, lambda: T.refine(path, delay=0.01), lambda: T.content(path)

    def cache(self, folder: Path):
        from qamdt.training.latent_cache import build_cache

        config = T.mdt_config(self.mdt_data, cache=str(folder / "cache"))
        cache = folder / "cache"

        def run():
            build_cache(config, cache, progress=False)

        def outputs():
            names = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
            return _bytes_of(cache, [n for n in names if n != "cache_build.json"])

        return cache, run, outputs

    def train(self, folder: Path):
        out = folder / "run"
        return out, lambda: T._train(self.mdt_data, out), lambda: T._weights(out)

    def train_vae(self, folder: Path):
        from qamdt.training.vae_train import VaeTrainConfig, train_vae

        config = VaeTrainConfig.from_dict(
            {
                "manifest": str(self.mdt_data / "manifest.jsonl"),
                "model": {"latent_channels": 8, "block_out_channels": [4, 8, 8],
                          "layers_per_block": 1, "norm_num_groups": 4,
                          "mid_block_add_attention": False},
                "segment_frames": 32, "steps": 12, "batch_size": 4, "learning_rate": 0.01,
                "warmup_steps": 0, "checkpoint_every": 2, "log_every": 2,
                "eval_batch_size": 4, "scale_clips": None, "max_minutes": None,
                "mixed_precision": "no", "valid_split": "train",
            }
        )  # fmt: skip
        out = folder / "run"

        def outputs():
            return _bytes_of(out / "model", ["diffusion_pytorch_model.safetensors"])

        return out, lambda: train_vae(config, out, progress=False), outputs

    def mos_train(self, folder: Path):
        out = folder / "run"

        def outputs():
            return _bytes_of(out / "checkpoint", ["model.safetensors"])

        return out, lambda: T._train_mos(self.rated, out), outputs


def _killed_in_checkpoint(run, seed: int) -> None:
    """Runs ``run`` with a SIGKILL at a random flush or rename inside a checkpoint save."""
    import qamdt.checkpoint_folders as folders

    rng = random.Random(seed)
    target = rng.randint(1, 60)
    calls = {"n": 0}
    fsync, replace = folders.fsync_path, os.replace

    def maybe_kill():
        calls["n"] += 1
        if calls["n"] == target:
            os.kill(os.getpid(), signal.SIGKILL)

    def counted_fsync(path):
        maybe_kill()
        fsync(path)

    def counted_replace(a, b):
        maybe_kill()
        replace(a, b)

    folders.fsync_path = counted_fsync
    folders.os.replace = counted_replace  # the module's os is the os module itself
    run()


def trial(campaign: Campaign, stage: str, index: int, seed: int, duration: float) -> dict:
    folder = campaign.root / f"{stage}-{index}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    rng = random.Random(seed * 1000 + index)
    name = "train" if stage == "ckpt" else stage.replace("-", "_")
    where, run, outputs = getattr(campaign, name)(folder)
    if stage == "ckpt":
        delay = None
        finished = run_killed(_killed_in_checkpoint, run, seed * 1000 + index, after=60.0)
    else:
        delay = rng.uniform(0.0, duration)
        finished = run_killed(run, after=delay)
    started = time.time()
    try:
        run()
        resumed, error = True, None
    except Exception as exc:  # a resume that fails is the finding
        resumed, error = False, f"{type(exc).__name__}: {exc}"
    result = {
        "stage": stage,
        "delay": None if delay is None else round(delay, 3),
        "killed": not finished,
        "resumed": resumed,
        "error": error,
        "resume_seconds": round(time.time() - started, 2),
    }
    if resumed:
        result["identical"] = outputs() == campaign.references[stage]
        if stage in ("label", "refine"):
            rows = read_manifest(where)
            field = "pmos" if stage == "label" else "caption_source"
            result["lost_rows"] = sum(getattr(r, field) is None and not r.errors for r in rows)
    shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-kills", type=int, default=0, help="add trials until this many were killed"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in the forked runs: the thread count changes float sums
    root = Path(tempfile.mkdtemp(prefix="kills-"))
    campaign = Campaign(root)
    campaign.references = {}
    report = {}
    for stage in args.stages:
        folder = root / f"{stage}-reference"
        folder.mkdir()
        name = "train" if stage == "ckpt" else stage.replace("-", "_")
        _, run, outputs = getattr(campaign, name)(folder)
        started = time.time()
        run()
        duration = time.time() - started
        campaign.references[stage] = outputs()
        results = []
        while len(results) < args.trials or (
            sum(r["killed"] for r in results) < args.min_kills
            and len(results) < 3 * max(args.trials, args.min_kills)
        ):
            results.append(trial(campaign, stage, len(results), args.seed, duration))
        summary = {
            "uninterrupted_seconds": round(duration, 2),
            "trials": len(results),
            "killed": sum(r["killed"] for r in results),
            "resumed": sum(r["resumed"] for r in results),
            "identical": sum(bool(r.get("identical")) for r in results),
            "lost_rows": sum(r.get("lost_rows", 0) for r in results),
            "errors": [r["error"] for r in results if r["error"]],
        }
        report[stage] = {"summary": summary, "trials": results}
        print(stage, json.dumps(summary), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How a real-music MOS model's scores follow the reference quality, on music it trained on.

Usage: python benchmarks/measure_mos_calibration.py --model DIR [--excerpts 60] [--out FILE]

Reads the model's ``train_config.json`` and scores (1) the clean excerpts of its training
files, of its validation files and of its held-out sources, and (2) fresh degraded versions
(8 per excerpt, chains of the training kinds drawn with another seed than training's) of
``--excerpts`` training excerpts and of the held-out excerpts: the mean p-MOS per band of
reference quality, and the slope and intercept of a straight line through all of them.
A clean score well below 5 on the training excerpts themselves is not a failure to
generalise: it is the model's best guess for music that may carry damage it cannot hear
(docs/mos.md, "Damage that sounds like a production choice").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BANDS = ((4.99, 5.01), (4.2, 4.99), (3.4, 4.2), (2.6, 3.4), (1.8, 2.6), (0.0, 1.8))
BAND_NAMES = ("5 (clean)", "4.2-5", "3.4-4.2", "2.6-3.4", "1.8-2.6", "below 1.8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--excerpts", type=int, default=60, help="training excerpts degraded")
    parser.add_argument(
        "--versions", type=int, default=9, help="versions per excerpt, clean one included"
    )
    parser.add_argument("--seed", type=int, default=123, help="seed of the fresh chains")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from mos_predictor.models import load_mos_model
    from mos_predictor.real_music import is_validation_file, plan_excerpts, read_excerpt
    from mos_predictor.train_config import MosTrainConfig
    from mos_predictor.versions import build_version_pool
    from qamdt.audio_io import normalize_waveform
    from qamdt.degradations import ChainSettings

    saved = json.loads((args.model / "train_config.json").read_text())
    config = MosTrainConfig.from_dict(saved, str(args.model / "train_config.json"))
    model = load_mos_model(args.model)
    rate, seconds = model.config.sample_rate, model.config.window_seconds
    floor = config.real_min_kbps_per_channel

    def score(waves: list[np.ndarray]) -> np.ndarray:
        return np.array([s["omq"] for s in model.predict(waves, rate, batch_size=16)])

    planned = plan_excerpts(
        config.real_sources, config.real_excerpts_per_file, seconds, config.seed,
        min_kbps_per_channel=floor,
    )  # fmt: skip
    train = [e for e in planned if not is_validation_file(e.path, config.real_valid_every)]
    valid = [e for e in planned if is_validation_file(e.path, config.real_valid_every)]
    held = plan_excerpts(
        config.holdout_sources, 1, seconds, config.seed, min_kbps_per_channel=floor
    )
    result: dict = {"clean": {}, "versions": {}}
    print("| clean excerpts | count | mean p-MOS | sd |")
    print("|---|---:|---:|---:|")
    for name, excerpts in (("training files", train), ("validation files", valid),
                           ("held-out sources", held)):  # fmt: skip
        waves = [w for w in (read_excerpt(e, rate) for e in excerpts) if w is not None]
        scores = score([normalize_waveform(w) for w in waves])
        result["clean"][name] = {"count": len(scores), "mean": float(scores.mean()),
                                 "sd": float(scores.std())}  # fmt: skip
        print(f"| {name} | {len(scores)} | {scores.mean():.3f} | {scores.std():.3f} |")

    step = max(1, len(train) // max(args.excerpts, 1))
    settings = ChainSettings(kinds=config.training_kinds())
    header = " | ".join(BAND_NAMES)
    print(f"\n| degraded versions | slope | intercept | {header} |")
    print("|---|---:|---:|" + "---:|" * len(BANDS))
    for name, excerpts in (("training excerpts", train[::step][: args.excerpts]),
                           ("held-out excerpts", held)):  # fmt: skip
        pool = build_version_pool(excerpts, rate, args.versions, settings, seed=args.seed)
        targets = pool.targets.reshape(-1)
        scores = score(list(pool.waves.reshape(-1, pool.waves.shape[-1]).astype(np.float32)))
        slope, intercept = np.polyfit(targets, scores, 1)
        means = [scores[(targets >= lo) & (targets < hi)] for lo, hi in BANDS]
        result["versions"][name] = {
            "slope": float(slope),
            "intercept": float(intercept),
            "band_means": [float(m.mean()) if m.size else None for m in means],
            "band_counts": [int(m.size) for m in means],
        }
        cells = " | ".join(f"{m.mean():.2f}" if m.size else "" for m in means)
        print(f"| {name} | {slope:.2f} | {intercept:.2f} | {cells} |")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

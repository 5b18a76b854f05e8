"""The guidance scale on a demo run's models, judged on the validation split.

Usage: python benchmarks/measure_guidance.py --run OUT [--scales 8 4] [--prompts 20]
       [--split valid] [--out OUT/guidance-measures]

Needs a demo run folder whose ``mdt``, ``mdt-baseline``, ``judge`` and ``clap`` stages
are done (``qamdt demo --out OUT``). For each guidance scale it generates, with the
run's other sampling settings, the true captions of ``--prompts`` clean clips of
``--split`` (not the test split the demo's checks use) at level 5, at level 1 and with
the plain MDT, and prints their p-MOS (by the run's judge, as the checks score) and
Frechet distance to those clean clips, with its standard error: the level-1 to level-5
p-MOS gap the demo's check asks for against how far level 5 and the baseline are from
clean audio. Choosing generation settings here keeps the test split for the checks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a demo run folder")
    parser.add_argument("--scales", type=float, nargs="+", default=[8.0, 4.0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from captioning.base import load_clap
    from mos_predictor.models import load_mos_model
    from qamdt.demo.common import judge_model, manifest_path, read_records
    from qamdt.demo.run import choose_prompts
    from qamdt.demo.settings import DemoSettings
    from qamdt.demo.stages import STATE_NAME
    from qamdt.evaluation.evaluate import evaluate_generated
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.generation.writer import generate_to_folder
    from qamdt.json_files import write_json

    state = json.loads((args.run / STATE_NAME).read_text())
    settings = DemoSettings.from_recorded(state["settings"])
    chosen = choose_prompts(read_records(args.run), args.prompts, split=args.split)
    clean = sum(c["clean_test"] for c in chosen)
    print(f"{len(chosen)} prompts, {clean} of them captions of clean {args.split} clips")
    models = args.run / "models"
    quality = QAMDTPipeline.from_pretrained(models / "pipeline")
    plain = QAMDTPipeline.from_pretrained(models / "pipeline-mdt")
    scorers = {
        "mos_model": load_mos_model(judge_model(args.run, settings)),
        "clap": load_clap(models / "clap"),
    }
    out = args.out or args.run / "guidance-measures"
    top, bottom = max(settings.levels), min(settings.levels)
    rows = []
    print(
        f"{'scale':>6s} {'generated':>10s} {'p-MOS':>6s} {'Frechet':>8s} {'se':>5s} {'seconds':>8s}"
    )
    for scale in args.scales:
        scaled = settings.replace(guidance_scale=scale)
        runs = [
            (f"level {level}", quality, scaled.level_settings(level)) for level in (top, bottom)
        ]
        runs.append(("mdt", plain, scaled.baseline_settings("")))
        for name, pipeline, generation in runs:
            folder = out / f"scale-{scale:g}" / name.replace(" ", "")
            start = time.perf_counter()
            generate_to_folder(
                pipeline,
                [c["prompt"] for c in chosen],
                generation,
                folder,
                batch_size=settings.generate_batch_size,
            )
            overall = evaluate_generated(
                folder,
                manifest_path(args.run),
                **scorers,
                captioner=None,
                split=args.split,
                reference_filter="clean",
                batch_size=settings.eval_batch_size,
                seed=settings.seed,
                examples_per_level=0,
            )["overall"]
            row = {
                "scale": scale,
                "generated": name,
                "pmos_mean": overall["pmos_mean"],
                "frechet": overall["frechet"],
                "frechet_se": overall["frechet_se"],
                "seconds": round(time.perf_counter() - start, 1),
            }
            rows.append(row)
            print(f"{scale:6g} {name:>10s} {row['pmos_mean']:6.3f} {row['frechet']:8.2f} "
                  f"{row['frechet_se']:5.2f} {row['seconds']:8.1f}")  # fmt: skip
    write_json(out / "guidance.json", {"split": args.split, "prompts": chosen, "rows": rows})


if __name__ == "__main__":
    main()

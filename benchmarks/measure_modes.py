"""Quality of the generation modes on a demo run's models: seams, long pieces, enhancement.

Usage: python benchmarks/measure_modes.py --run OUT [--pieces 3] [--clips 8]
       [--out OUT/editing-measures]

Needs a demo run folder whose ``mdt``, ``mos``, ``clap`` and ``generate`` stages are done
(``qamdt demo --out OUT``). Runs the demo's ``edit`` stage measures
(:func:`qamdt.demo.editing.measure_modes`) with more pieces and clips and prints them:

* the spectral flux at the window seams of each long piece (six clips long) over its
  median elsewhere (target: at most 1.5);
* the p-MOS of the long pieces against the sweep's level-5 clips (target: within 0.3);
* degraded held-out clips regenerated at strength 0.5 at level 5 and level 1 (target: level
  5 gains p-MOS) and their CLAP score to their captions against a fresh generation from
  the captions (target: higher).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a demo run folder")
    parser.add_argument("--pieces", type=int, default=3, help="long pieces")
    parser.add_argument("--clips", type=int, default=8, help="degraded held-out clips")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from captioning.base import load_clap
    from mos_predictor.models import load_mos_model
    from qamdt.demo.settings import DemoSettings
    from qamdt.demo.stages import STATE_NAME
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.json_files import write_json
    from qamdt.manifest import read_manifest

    state = json.loads((args.run / STATE_NAME).read_text())
    settings = DemoSettings.from_dict(state["settings"])
    prompts = [c["prompt"] for c in state["stages"]["generate"]["result"]["prompts"]]
    models = args.run / "models"
    manifest = args.run / "corpus" / "manifest.jsonl"
    out = args.out or args.run / "editing-measures"
    from qamdt.demo.editing import measure_modes

    start = time.perf_counter()
    result = measure_modes(
        QAMDTPipeline.from_pretrained(models / "pipeline"),
        load_mos_model(models / "mos"),
        load_clap(models / "clap"),
        list(read_manifest(manifest)),
        manifest.parent,
        out,
        settings.generation_settings(),
        args.run / "generated" / "qa-mdt",
        prompts,
        pieces=args.pieces,
        clips=args.clips,
        negative_levels={level: settings.negative_level_for(level) for level in (1, 5)},
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "measures.json", result)
    print(f"models: {models} ({args.pieces} pieces, {len(result['enhancement'])} clips, "
          f"{result['seconds']} s)")  # fmt: skip
    for row in result["targets"]:
        value = "missing" if row["value"] is None else f"{row['value']:.3f}"
        print(f"{row['measure']:70s} {value:>8s}  target {row['target']:7s} "
              f"{'met' if row['met'] else 'NOT met'}")  # fmt: skip
    print(f"long pieces p-MOS {result['pmos_pieces']:.3f}, clips of the same level "
          f"{result['pmos_clips_same_level']}")  # fmt: skip
    for key, value in result["enhancement_means"].items():
        print(f"  mean {key:14s} {value:.3f}")
    for row in result["pieces"]:
        print(f"  piece seams {row['seams']}: flux ratio mean {row['seam_flux_mean']:.2f}, "
              f"max {row['seam_flux_max']:.2f}, p-MOS {row['pmos']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Quality of the generation modes on a demo run's models: seams, long pieces, enhancement.

Usage: python benchmarks/measure_modes.py --run OUT [--pieces 3] [--clips 8]
       [--out OUT/editing-measures]
       [--window-overlap 0.25] [--repaint-resamples N]
       python benchmarks/measure_modes.py --run OUT [--out ...] --diagnose

Needs a demo run folder whose ``mdt``, ``mos``, ``clap`` and ``generate`` stages are done
(``qamdt demo --out OUT``). Runs the demo's ``edit`` stage measures
(:func:`qamdt.demo.editing.measure_modes`) with more pieces and clips and prints them:

* the spectral flux at the window seams of each long piece (six clips long) over its
  median elsewhere (target: at most 1.5), beside the same statistic midway between the
  seams (what the music gives where there is no seam);
* the p-MOS of the long pieces against fresh level-5 clips of the same prompts, six per
  prompt, both scored in excerpts of the clip length (target: within 0.3); the pieces
  scored whole and the sweep's level-5 clips are printed beside them;
* degraded held-out clips regenerated at strength 0.5 at level 5 and level 1 (target: level
  5 gains p-MOS) and their CLAP score to their captions against a fresh generation from
  the captions (target: higher).

``--diagnose`` generates nothing: it scores the pieces a measuring run wrote to ``--out``
in the ways that explain the p-MOS comparison: whole (the predictor peak-normalises the
30 s and averages its 4 s windows), in 5 s excerpts (each normalised as a clip is: the
measure), the first excerpt against the later ones (is a continuation better than a
start?), and the excerpts with their samples scaled by 0.7 and 0.5 after the predictor's
normalisation (how much the predictor's score depends on the level alone).
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
    parser.add_argument(
        "--window-overlap", type=float, default=None, help="window_overlap of the pieces"
    )
    parser.add_argument(
        "--repaint-resamples", type=int, default=None, help="repaint_resamples of the pieces"
    )
    parser.add_argument(
        "--diagnose", action="store_true", help="score the pieces written to --out; no generation"
    )
    args = parser.parse_args()
    if args.diagnose:
        diagnose(args.run, args.out or args.run / "editing-measures")
        return

    from captioning.base import load_clap
    from mos_predictor.models import load_mos_model
    from qamdt.demo.settings import DemoSettings
    from qamdt.demo.stages import STATE_NAME
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.json_files import write_json
    from qamdt.manifest import read_manifest

    state = json.loads((args.run / STATE_NAME).read_text())
    settings = DemoSettings.from_recorded(state["settings"])
    prompts = [c["prompt"] for c in state["stages"]["generate"]["result"]["prompts"]]
    models = args.run / "models"
    manifest = args.run / "corpus" / "manifest.jsonl"
    out = args.out or args.run / "editing-measures"
    from qamdt.demo.editing import measure_modes

    generation = settings.generation_settings()
    for name in ("window_overlap", "repaint_resamples"):
        if getattr(args, name) is not None:
            generation = generation.replace(**{name: getattr(args, name)})
    start = time.perf_counter()
    result = measure_modes(
        QAMDTPipeline.from_pretrained(models / "pipeline"),
        load_mos_model(models / "mos"),
        load_clap(models / "clap"),
        list(read_manifest(manifest)),
        manifest.parent,
        out,
        generation,
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
    print(f"long pieces p-MOS {result['pmos_pieces']:.3f} in {result['window_seconds']:g} s "
          f"excerpts ({result['pmos_pieces_whole']:.3f} scored whole), "
          f"{result['reference_clips']} fresh clips per prompt {result['pmos_clips_same_level']}, "
          f"the sweep's clips {result['pmos_sweep_clips']}")  # fmt: skip
    print(f"largest seam flux ratio {result['targets'][0]['value']}, largest midway between "
          f"seams {result['control_flux_max']}")  # fmt: skip
    for key, value in result["enhancement_means"].items():
        print(f"  mean {key:14s} {value:.3f}")

    def show(value):
        return "none" if value is None else f"{value:.2f}"

    for row in result["pieces"]:
        print(f"  piece seams {row['seams']}: flux ratio mean {show(row['seam_flux_mean'])}, "
              f"max {show(row['seam_flux_max'])} (midway: mean {show(row['control_flux_mean'])}, "
              f"max {show(row['control_flux_max'])}), p-MOS {row['pmos']:.2f} "
              f"(whole {row['pmos_whole']:.2f})")  # fmt: skip


def diagnose(run: Path, out: Path) -> None:
    """Scores the written pieces whole, in excerpts, and at lower levels (see the top)."""
    import numpy as np
    import torch

    from mos_predictor.models import load_mos_model
    from qamdt.audio_io import load_audio, normalize_waveform
    from qamdt.audio_windows import padded_windows
    from qamdt.demo.editing import excerpts

    mos = load_mos_model(run / "models" / "mos")
    result = json.loads((out / "measures.json").read_text())
    seconds = result["window_seconds"]
    pieces = [load_audio(row["file"], mos.config.sample_rate)[0] for row in result["pieces"]]
    rate, size = mos.config.sample_rate, mos.config.window_samples
    cut = [excerpts(piece, seconds, rate) for piece in pieces]

    def at_gain(waves, gain):
        scores = []
        for wave in waves:
            windows = [w for w, _ in padded_windows(normalize_waveform(wave), size)]
            batch = torch.from_numpy(np.stack(windows) * gain).float().to(mos.device)
            lengths = torch.full((len(windows),), size, device=mos.device)
            with torch.no_grad():
                scores.append(float(mos.eval()(batch, lengths=lengths).omq.float().mean()))
        return np.array(scores)

    flat = [e for row in cut for e in row]
    whole = np.array([s["omq"] for s in mos.predict(pieces, rate)])
    parts = np.array([s["omq"] for s in mos.predict(flat, rate)]).reshape(len(pieces), -1)
    windows = [w for piece in pieces for w, _ in padded_windows(normalize_waveform(piece), size)]
    alone = np.mean([s["omq"] for s in mos.predict(windows, rate)])
    print(f"{len(pieces)} pieces; p-MOS scored whole {whole.mean():.3f}, in {seconds:g} s "
          f"excerpts {parts.mean():.3f} (SD of one excerpt {parts.std():.3f})")  # fmt: skip
    print(f"  first excerpt {parts[:, 0].mean():.3f}, later ones {parts[:, 1:].mean():.3f}")
    print(f"  the whole pieces' 4 s windows, each normalised on its own: {alone:.3f}")
    for gain in (1.0, 0.7, 0.5):
        print(f"  excerpts at {gain:g} of their normalised level: {at_gain(flat, gain).mean():.3f}")
    rms = [float(np.sqrt(np.mean(w**2)) / np.abs(w).max()) for w in pieces]
    rms_parts = [float(np.sqrt(np.mean(w**2)) / np.abs(w).max()) for w in flat]
    print(f"  RMS over peak: whole pieces {np.mean(rms):.3f}, excerpts {np.mean(rms_parts):.3f}")


if __name__ == "__main__":
    main()

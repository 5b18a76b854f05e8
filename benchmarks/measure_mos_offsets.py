"""How far the music's offset limits a MOS model's ranking on the protocol, and a probe.

Usage: python benchmarks/measure_mos_offsets.py --model DIR [--source SOURCE]
       [--excerpts-per-file N] [--probe KIND:SEVERITY ...] [--out FILE]

Makes the protocol's clips (the model's held-out sources, or ``--source``) and scores them.

* **Offset bound.** Each excerpt's clean score less the mean clean score is its music's
  offset. The excerpt's clean and degraded scores are shifted by ``(1 - f)`` of it, for
  ``f`` = 1, 0.5, 0.25 and 0, and the protocol's figures measured again: the pooled
  within-kind SRCC a model would reach if the music moved its score ``f`` times as much,
  hearing the damage as it does now.
* **Probe** (``--probe``). Every clip is degraded once more by a known kind at a known
  severity, a *trained* kind, and scored again. Under the reference-quality model
  (``qamdt.degradations.reference_quality``) the score's fall is ``(Q - 1) s`` for a clip
  of quality ``Q``, whatever the music, so the fall measures quality without the
  music's offset if the model follows that model. The fall alone, and the score plus
  ``w`` times the fall (w = 0.25, 0.5, 1), are measured as scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SHRINKS = (1.0, 0.5, 0.25, 0.0)
PROBE_WEIGHTS = (0.25, 0.5, 1.0)


def shifted_by_offset(scores: np.ndarray, clips, keep: float) -> np.ndarray:
    """Scores with each excerpt's clean offset scaled to ``keep`` of itself.

    Args:
        scores: Scores of ``clips.waves()``: the clean excerpts, then the degraded clips.
        clips: The protocol's ``ProtocolClips``.
        keep: Share of the offset left (1: unchanged, 0: every excerpt's clean score alike).

    Returns:
        The shifted scores, in the same order.
    """
    count = len(clips.clean)
    offsets = scores[:count] - scores[:count].mean()
    excerpt = np.array(list(range(count)) + [key[2] for key in clips.degraded])
    return scores - (1.0 - keep) * offsets[excerpt]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--source", default=None, help="held-out source (default: the model's)")
    parser.add_argument("--excerpts-per-file", type=int, default=1)
    parser.add_argument(
        "--probe", action="append", default=[], help="KIND:SEVERITY, a trained kind (repeatable)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from mos_predictor.models import load_mos_model
    from mos_predictor.protocol import make_protocol_clips, score_protocol, settings_for_model
    from qamdt.audio_io import normalize_waveform
    from qamdt.degradations import apply_chain, check_kinds

    probes = []
    for text in args.probe:
        kind, _, severity = text.partition(":")
        check_kinds([kind], "--probe")
        try:
            probes.append((kind, float(severity)))
        except ValueError:
            parser.error(f"--probe {text!r}: give KIND:SEVERITY, e.g. mp3:0.5")
    settings = settings_for_model(
        args.model,
        [args.source] if args.source else None,
        excerpts_per_file=args.excerpts_per_file,
        workers=args.workers,
    )
    model = load_mos_model(args.model)
    rate = model.config.sample_rate
    clips = make_protocol_clips(settings, rate, model.config.window_seconds)
    waves = clips.waves()

    def score(clip_waves) -> np.ndarray:
        return np.array([p["omq"] for p in model.predict(clip_waves, rate, batch_size=16)])

    scores = score(waves)
    rows = [(f"offset x {keep:g}", shifted_by_offset(scores, clips, keep)) for keep in SHRINKS]
    for kind, severity in probes:
        # The same random choices (a noise colour, say) for every clip.
        chain = [(kind, severity)]
        probed = [
            normalize_waveform(apply_chain(w, rate, chain, np.random.default_rng(7))[0])
            for w in waves
        ]
        fall = scores - score(probed)
        rows.append((f"fall under {kind} {severity:g}", fall))
        rows += [(f"score + {w:g} x fall", scores + w * fall) for w in PROBE_WEIGHTS]

    result = []
    print("| scores | held-out kinds SRCC (per excerpt) | trained kinds SRCC | per held-out kind |")
    print("|---|---:|---:|---|")
    for name, values in rows:
        measured = score_protocol(clips, list(values), settings)
        summary = measured["summary"]
        kinds = {k: round(v["srcc"], 3) for k, v in measured["kinds"].items() if v["held_out"]}
        result.append({"scores": name, **summary, "held_out_kinds": kinds})
        per_kind = ", ".join(f"{k} {v:.3f}" for k, v in kinds.items())
        print(
            f"| {name} | {summary['heldout_families_srcc']:.3f} "
            f"({summary['heldout_families_within_srcc']:.3f}) | "
            f"{summary['trained_families_srcc']:.3f} | {per_kind} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

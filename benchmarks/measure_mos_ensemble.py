"""Several MOS models, one at a time and their scores averaged, on the protocol.

Usage: python benchmarks/measure_mos_ensemble.py --models DIR [DIR ...]
       [--data corpus:MANIFEST] [--out FILE]

The models must have been trained with the same hold-outs (their ``train_config.json``).
The protocol's clips are made once; each model scores them and the corpus test split
(with ``--data``), and the per-clip mean of all the models' scores is measured the same
way; then how much the models agree on the clean excerpts, and how their mean clean score
follows the excerpt's brightness. Does a score's dependence on the music (docs/mos.md)
come from one training run's chance, which averaging removes, or from what every run
learns?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--data", default=None, help="corpus:MANIFEST for the test split")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from mos_predictor.data import load_ratings
    from mos_predictor.metrics import evaluate_predictions
    from mos_predictor.models import load_mos_model
    from mos_predictor.protocol import (
        make_protocol_clips,
        recorded_holdouts,
        score_protocol,
        settings_for_model,
    )
    from mos_predictor.train import predict_clips

    holdouts = [recorded_holdouts(m) for m in args.models]
    if any(h != holdouts[0] for h in holdouts):
        raise SystemExit("measure_mos_ensemble: the models were trained with other hold-outs")
    settings = settings_for_model(args.models[0], workers=args.workers)
    models = [load_mos_model(m) for m in args.models]
    config = models[0].config
    clips = make_protocol_clips(settings, config.sample_rate, config.window_seconds)
    waves = clips.waves()
    rated = load_ratings(args.data, split="test") if args.data else []
    truth = np.array([c.mos for c in rated])
    protocol_scores, test_scores = [], []
    for model in models:
        predicted = model.predict(waves, model.config.sample_rate)
        protocol_scores.append(np.array([p["omq"] for p in predicted]))
        if rated:
            test_scores.append(np.array([p["omq"] for p in predict_clips(model, rated, 16)]))

    rows = []
    names = [str(m) for m in args.models] + [f"mean of the {len(models)}"]
    for i, name in enumerate(names):
        pick = slice(i, i + 1) if i < len(models) else slice(None)
        summary = score_protocol(clips, np.mean(protocol_scores[pick], axis=0), settings)
        row = {"model": name, **summary["summary"]}
        if rated:
            test = evaluate_predictions(np.mean(test_scores[pick], axis=0), truth, None)
            row["corpus_test_srcc"] = test["utterance"]["srcc"]
        rows.append(row)
    clean = np.array([s[: len(clips.clean)] for s in protocol_scores])
    agreement = (
        np.corrcoef(clean)[np.triu_indices(len(models), 1)].mean() if len(models) > 1 else 1.0
    )

    header = ["model", "clean mean", "held-out kinds SRCC (per excerpt)", "trained kinds SRCC"]
    print("| " + " | ".join([*header, "corpus test SRCC"]) + " |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        test = f"{r['corpus_test_srcc']:.3f}" if "corpus_test_srcc" in r else ""
        held = f"{r['heldout_families_srcc']:.3f} ({r['heldout_families_within_srcc']:.3f})"
        cells = [r["model"], f"{r['clean_mean']:.3f}", held, f"{r['trained_families_srcc']:.3f}"]
        print("| " + " | ".join([*cells, test]) + " |")
    # How bright each clean excerpt is: its share of energy above 4 kHz.
    bright = []
    for wave in clips.clean:
        power = np.abs(np.fft.rfft(wave)) ** 2
        freqs = np.fft.rfftfreq(wave.size, 1 / config.sample_rate)
        bright.append(power[freqs > 4000].sum() / power.sum())
    brightness = float(stats.spearmanr(clean.mean(axis=0), bright)[0])
    print(f"mean correlation of the models' clean-excerpt scores: {agreement:.3f}")
    print(
        f"Spearman correlation of the mean clean score and the share above 4 kHz: {brightness:.3f}"
    )
    if args.out is not None:
        result = {"rows": rows, "clean_agreement": agreement, "clean_brightness": brightness}
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

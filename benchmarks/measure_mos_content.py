"""How much a MOS model's score of clean music follows the music rather than its quality.

Usage: python benchmarks/measure_mos_content.py --models DIR [DIR ...] --source SOURCE
       [--excerpts-per-file 4] [--out FILE]

Takes the clean excerpts of one real-music source (a Debian package or a folder of audio
files, as ``real_sources``; files under the model's bitrate floor are left out) and scores
them with each model, their scores averaged per excerpt. Then two views of what moves the
clean score:

1. Correlations (Spearman, over excerpts) between the clean score and features of the
   music: level (RMS, dBFS), crest factor, the shares of energy below 150 Hz and above
   4 kHz, spectral flatness and onset strength. A strong one names what the model takes
   for quality.
2. Production changes applied to every excerpt, and the mean change of the score: a
   treble shelf (+-6 dB above 8 kHz, rising from 2 kHz), a bass shelf (+-6 and -12 dB
   below 100 Hz, to 400 Hz) and a tanh drive (2 and 6 dB). Mastering engineers move
   treble and bass by such amounts, so a good judge barely moves with the shelves; the
   drive is distortion and should lower it.

Use a source the models were not trained on; a source refused for training
(``mos_predictor.real_music.check_source_allowed``) is refused here too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats


def shelf(x: np.ndarray, sr: int, gain_db: float, start_hz: float, end_hz: float) -> np.ndarray:
    """A shelf in log-frequency: ``gain_db`` beyond ``end_hz``, none before ``start_hz``.

    ``start_hz < end_hz`` is a treble shelf, ``start_hz > end_hz`` a bass shelf.
    """
    freqs = np.maximum(np.fft.rfftfreq(x.size, 1.0 / sr), 1.0)
    ramp = np.clip(np.log(freqs / start_hz) / np.log(end_hz / start_hz), 0.0, 1.0)
    return np.fft.irfft(np.fft.rfft(x) * 10.0 ** (gain_db * ramp / 20.0), x.size)


def drive(x: np.ndarray, gain_db: float) -> np.ndarray:
    """tanh saturation after ``gain_db`` of gain, back at the input's peak."""
    peak = float(np.abs(x).max()) or 1.0
    y = np.tanh(x / peak * 10.0 ** (gain_db / 20.0))
    return y / np.abs(y).max() * peak


CHANGES = {
    "treble +6 dB": lambda x, sr: shelf(x, sr, 6.0, 2000.0, 8000.0),
    "treble -6 dB": lambda x, sr: shelf(x, sr, -6.0, 2000.0, 8000.0),
    "bass +6 dB": lambda x, sr: shelf(x, sr, 6.0, 400.0, 100.0),
    "bass -6 dB": lambda x, sr: shelf(x, sr, -6.0, 400.0, 100.0),
    "bass -12 dB": lambda x, sr: shelf(x, sr, -12.0, 400.0, 100.0),
    "drive 2 dB": lambda x, sr: drive(x, 2.0),
    "drive 6 dB": lambda x, sr: drive(x, 6.0),
}


def features(x: np.ndarray, sr: int) -> dict[str, float]:
    """Level, crest, band shares, flatness and onset strength of one excerpt."""
    import librosa

    power = np.abs(librosa.stft(x, n_fft=1024, hop_length=256)) ** 2
    freqs = librosa.fft_frequencies(sr=sr, n_fft=1024)
    total = float(power.sum()) + 1e-12
    rms = float(np.sqrt(np.mean(np.square(x)))) + 1e-9
    return {
        "level (dBFS)": 20 * np.log10(rms),
        "crest (dB)": 20 * np.log10(float(np.abs(x).max()) / rms),
        "share below 150 Hz": float(power[freqs < 150].sum()) / total,
        "share above 4 kHz": float(power[freqs > 4000].sum()) / total,
        "spectral flatness": float(np.mean(librosa.feature.spectral_flatness(S=np.sqrt(power)))),
        "onset strength": float(np.mean(librosa.onset.onset_strength(y=x, sr=sr))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--source", required=True, help="a Debian package or a folder")
    parser.add_argument("--excerpts-per-file", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from mos_predictor.models import load_mos_model
    from mos_predictor.protocol import read_clean_excerpts, settings_for_model

    models = [load_mos_model(m) for m in args.models]
    rate, seconds = models[0].config.sample_rate, models[0].config.window_seconds
    settings = settings_for_model(
        args.models[0], [args.source], [], excerpts_per_file=args.excerpts_per_file
    )
    excerpts, _, _ = read_clean_excerpts(settings, rate, seconds)
    clean = [np.asarray(w, dtype=np.float32) for w in excerpts]

    def score(waves: list[np.ndarray]) -> np.ndarray:
        return np.mean(
            [[s["omq"] for s in m.predict(waves, rate, batch_size=16)] for m in models], axis=0
        )

    base = score(clean)
    print(
        f"{len(clean)} clean excerpts of {args.source}, {len(models)} model(s): mean p-MOS "
        f"{base.mean():.3f}, sd {base.std():.3f}, {base.min():.2f} to {base.max():.2f}"
    )
    table = [features(x, rate) for x in clean]
    correlations = {
        name: float(stats.spearmanr(base, [row[name] for row in table])[0]) for name in table[0]
    }
    print("| feature | Spearman correlation with the clean score |\n|---|---:|")
    for name, rho in correlations.items():
        print(f"| {name} | {rho:+.2f} |")
    changes = {}
    print("| change | mean p-MOS | mean change | sd of the change |\n|---|---:|---:|---:|")
    for name, change in CHANGES.items():
        moved = score([change(x, rate).astype(np.float32) for x in clean]) - base
        changes[name] = {"mean_change": float(moved.mean()), "sd": float(moved.std())}
        print(f"| {name} | {base.mean() + moved.mean():.3f} | {moved.mean():+.3f} | "
              f"{moved.std():.3f} |")  # fmt: skip
    if args.out:
        result = {
            "models": [str(m) for m in args.models],
            "source": args.source,
            "excerpts": len(clean),
            "clean_mean": float(base.mean()),
            "correlations": correlations,
            "changes": changes,
        }
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

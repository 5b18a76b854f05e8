"""The Score tab's work: one uploaded clip -> p-MOS, level and prefix, CLAP score, picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qamdt.app.generate import InputError

MAX_SCORE_SECONDS = 120.0
"""Longer uploads are scored on their first two minutes (the page says so)."""


def _missing(flag: str) -> str:
    return f"not loaded (start the app with {flag})"


def score_clip(models, audio_path: str | Path | None, text: str | None, out_dir: Path):
    """Scores one audio file with the loaded models and draws its spectrogram.

    Args:
        models: The app's :class:`~qamdt.app.models.AppModels`.
        audio_path: The uploaded or recorded file.
        text: What the clip should be; without it, the captioner's caption (when one is
            loaded) is scored instead.
        out_dir: Where the spectrogram goes.

    Returns:
        ``(scores, spectrogram_png)``: a JSON-ready dict and the picture's path.

    Raises:
        InputError: No file, or one that cannot be read as audio (the reason named).
    """
    from qamdt.app.plots import spectrogram_png
    from qamdt.audio_io import audio_info, load_audio, resample
    from qamdt.errors import QamdtError

    if not audio_path:
        raise InputError("Audio: upload or record a clip first")
    try:
        info = audio_info(audio_path)
        wave, rate = load_audio(audio_path, duration=MAX_SCORE_SECONDS, allow_silent=True)
    except QamdtError as error:
        raise InputError(f"Audio: {error}") from None
    if wave.shape[0] == 0:
        raise InputError("Audio: the file holds no samples")
    seconds = wave.shape[0] / rate
    scores: dict[str, Any] = {
        "file": Path(audio_path).name,
        "seconds": round(float(info.get("duration", seconds)), 3),
        "sample_rate": rate,
    }
    if seconds < float(info.get("duration", seconds)) - 1e-3:
        scores["scored_seconds"] = round(seconds, 3)
    pmos = models.pmos([wave], rate)
    if pmos is None:
        scores["pmos"] = _missing("--mos")
    else:
        scores["pmos"] = round(pmos[0], 4)
        labels = models.label(pmos[0])
        if labels is None:
            scores["level"] = "no quality statistics loaded"
        else:
            scores["level"], scores["prefix"] = labels
            scores["quality_stats"] = models.stats_source
    text = (text or "").strip()
    if not text and models.captioner is not None:
        text = models.captioner.caption([wave], rate)[0]
        scores["caption"] = text
    elif not text:
        scores["caption"] = _missing("--captioner") + "; or type a text"
    if models.clap is None:
        scores["clap"] = _missing("--clap")
    elif text:
        scores["clap_text"] = text
        scores["clap"] = round(models.clap_scores([wave], rate, [text])[0], 4)
    else:
        scores["clap"] = "type a text to score the clip against"
    spec = models.pipeline.spec
    picture = spectrogram_png(
        resample(wave, rate, spec.sample_rate), spec, out_dir / "spectrogram.png", scores["file"]
    )
    return scores, picture

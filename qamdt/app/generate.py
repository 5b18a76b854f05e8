"""The Generate tab's work: controls -> ``GenerationSettings`` -> WAVs, sidecars and scores.

The settings are the same object ``qamdt generate`` builds (explicit values over the
pipeline folder's defaults over the global ones), and the files are written by the same
writer, so a clip made in the browser has the sidecar a command-line clip has.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qamdt.errors import QamdtError
from qamdt.generation.settings import GenerationSettings, SettingsError
from qamdt.quality import LEVELS

MAX_CANDIDATES = 4
"""Candidates per prompt the page offers (each one is a full sampling run)."""

CONTROL_LABELS = {
    "quality_level": "Quality",
    "negative_prompt": "Negative prompt",
    "negative_quality_level": "Negative level",
    "guidance": "Guidance mode",
    "guidance_scale": "Guidance scale",
    "guidance_rescale": "Guidance rescale",
    "guidance_interval": "Guidance interval",
    "num_inference_steps": "Steps",
    "scheduler": "Sampler",
    "eta": "Eta",
    "audio_length_in_s": "Length (s)",
    "num_waveforms_per_prompt": "Candidates",
    "seed": "Seed",
    "strength": "Strength",
    "inpaint_ranges": "Ranges to regenerate",
    "repaint_resamples": "RePaint resamples",
    "repaint_jump": "RePaint jump",
    "window_seconds": "Window (s)",
    "window_overlap": "Window overlap",
}
"""Generation setting -> the label of the control that sets it, for error messages."""

DEFAULT_NEGATIVE_LEVEL = "default"
"""The negative-level choice that keeps the mode's own (1 for quality, 3 for released)."""

EDIT_MODES = {
    "audio-to-audio": "init_audio",
    "inpainting": "inpaint_audio",
    "continuation": "continue_audio",
}
"""The Edit tab's modes -> the pipeline argument that takes the input audio."""

RESULT_MAX_AGE_S = 3600.0
"""Result folders older than this are removed when a new one is made."""


class InputError(QamdtError):
    """A control with a bad value; the message names the control and its setting."""


@dataclasses.dataclass
class Clip:
    """One generated clip, written and scored.

    Attributes:
        wav: The WAV file.
        sidecar: Its JSON sidecar (every setting of the call).
        spectrogram: A PNG of its log-mel spectrogram.
        quality_level: The level it was generated at.
        pmos: Its p-MOS, when a MOS model is loaded.
        level: The level its p-MOS falls in under the loaded statistics.
        prefix: The prefix of that level.
        clap: Its CLAP score against the prompt, when a CLAP scorer is loaded.
        rank: Its rank among the prompt's candidates (0 = best CLAP score).
    """

    wav: Path
    sidecar: Path
    spectrogram: Path
    quality_level: float | None
    pmos: float | None = None
    level: int | None = None
    prefix: str | None = None
    clap: float | None = None
    rank: int = 0

    def caption(self) -> str:
        """One line for the page: level, rank and the scores that exist."""
        parts = []
        if self.quality_level is not None:
            parts.append(f"level {self.quality_level:g}")
        parts.append(f"candidate {self.rank + 1}")
        if self.pmos is not None:
            labelled = f" (level {self.level}, {self.prefix})" if self.level is not None else ""
            parts.append(f"p-MOS {self.pmos:.2f}{labelled}")
        if self.clap is not None:
            parts.append(f"CLAP {self.clap:.3f}")
        return " · ".join(parts)


def parse_negative_level(choice: Any) -> float | None:
    """The negative level of the dropdown's choice (None: the guidance mode's default)."""
    if choice is None or choice == "" or choice == DEFAULT_NEGATIVE_LEVEL:
        return None
    try:
        return float(choice)
    except (TypeError, ValueError):
        raise InputError(
            f"{CONTROL_LABELS['negative_quality_level']} (negative_quality_level): "
            f"expected a level or '{DEFAULT_NEGATIVE_LEVEL}', got {choice!r}"
        ) from None


def build_settings(
    defaults: Mapping[str, Any] | None,
    *,
    quality: float | None,
    guidance: str,
    negative_level: Any,
    negative_prompt: str | None,
    guidance_scale: float | None,
    guidance_rescale: float | None,
    use_interval: bool,
    interval_low: float | None,
    interval_high: float | None,
    sampler: str | None,
    steps: float | None,
    eta: float | None,
    length: float | None,
    random_seed: bool,
    seed: float | None,
    candidates: float | None,
) -> GenerationSettings:
    """The generation settings of the page's controls.

    A control left empty takes the pipeline folder's default, then the global one, as an
    option left out of ``qamdt generate`` does. A random seed is drawn here, so the
    sidecar records the seed that was used.

    Raises:
        InputError: Naming the control (and its setting) with a bad value.
    """
    if random_seed:
        seed = secrets.randbelow(2**31)
    elif seed is None:
        raise InputError("Seed (seed): give a seed, or tick 'random seed'")
    explicit = {
        "quality_level": quality,
        "guidance": guidance,
        "negative_quality_level": parse_negative_level(negative_level),
        "negative_prompt": (negative_prompt or "").strip() or None,
        "guidance_scale": guidance_scale,
        "guidance_rescale": guidance_rescale,
        "guidance_interval": (interval_low, interval_high) if use_interval else None,
        "scheduler": sampler or None,
        "num_inference_steps": steps,
        "eta": eta,
        "audio_length_in_s": length,
        "num_waveforms_per_prompt": candidates,
        "seed": seed,
    }
    if use_interval and (interval_low is None or interval_high is None):
        raise InputError("Guidance interval (guidance_interval): give both ends, low and high")
    # None keeps the layer underneath, except where None is itself the choice.
    keep_none = {"negative_quality_level", "negative_prompt", "guidance_interval"}
    given = {k: v for k, v in explicit.items() if v is not None or k in keep_none}
    if given.get("num_waveforms_per_prompt", 1) > MAX_CANDIDATES:
        raise InputError(
            f"Candidates (num_waveforms_per_prompt): at most {MAX_CANDIDATES} here, "
            f"got {given['num_waveforms_per_prompt']:g}"
        )
    try:
        return GenerationSettings.resolve(defaults, given)
    except SettingsError as error:
        raise _named(error) from None


def _named(error: SettingsError) -> InputError:
    label = CONTROL_LABELS.get(error.field, error.field)
    return InputError(f"{label} ({error.field}): {error.reason}")


def parse_ranges(text: str | None) -> tuple[tuple[float, float], ...] | None:
    """Time ranges typed as ``"2-4, 6.5-8"`` (seconds), or None for an empty text.

    Raises:
        InputError: Naming the control and the part that is no range.
    """
    ranges = []
    for part in (text or "").replace(";", ",").split(","):
        if not part.strip():
            continue
        bounds = part.strip().split("-")
        try:
            start, end = (float(b) for b in bounds)
        except ValueError:
            raise InputError(
                f"Ranges to regenerate (inpaint_ranges): '{part.strip()}' is not START-END "
                "in seconds, e.g. 2-4.5"
            ) from None
        if not 0 <= start < end:
            raise InputError(
                f"Ranges to regenerate (inpaint_ranges): '{part.strip()}' needs 0 <= start < end"
            )
        ranges.append((start, end))
    return tuple(ranges) or None


def edit_settings(
    settings: GenerationSettings,
    mode: str,
    *,
    strength: float | None,
    ranges: str | None,
    resamples: float | None,
    jump: float | None,
    total_length: float | None,
) -> tuple[GenerationSettings, str]:
    """The settings of an edit, and the pipeline argument that takes its input audio.

    Audio-to-audio and inpainting keep the input's length; continuation goes on to
    ``total_length`` seconds.

    Raises:
        InputError: Naming the control with a bad value, or an unknown mode.
    """
    if mode not in EDIT_MODES:
        raise InputError(f"Mode: unknown {mode!r}; choose one of {list(EDIT_MODES)}")
    changes: dict[str, Any] = {"audio_length_in_s": None}
    if mode == "audio-to-audio":
        changes["strength"] = strength
    elif mode == "inpainting":
        changes["inpaint_ranges"] = parse_ranges(ranges)
        if changes["inpaint_ranges"] is None:
            raise InputError("Ranges to regenerate (inpaint_ranges): give at least one, e.g. 2-4")
        changes["repaint_resamples"] = resamples
        changes["repaint_jump"] = jump
    else:
        changes["audio_length_in_s"] = total_length
    # An empty number keeps the setting as it is (the pipeline's default).
    changes = {k: v for k, v in changes.items() if v is not None or k == "audio_length_in_s"}
    try:
        return settings.replace(**changes), EDIT_MODES[mode]
    except SettingsError as error:
        raise _named(error) from None


def check_prompt(prompt: str | None) -> str:
    """The prompt, stripped; raises ``InputError`` when it is empty."""
    text = (prompt or "").strip()
    if not text:
        raise InputError("Prompt: type what the music should be")
    return text


def sweep_levels(settings: GenerationSettings) -> list[GenerationSettings]:
    """The same settings at levels 1-5 (same seed, so the same starting noise).

    Raises:
        InputError: For the negative-prompt mode, which has no quality levels.
    """
    if settings.guidance == "negative-prompt":
        raise InputError(
            "Guidance mode (guidance): the levels 1-5 sweep needs 'quality' or 'released' "
            "guidance; 'negative-prompt' uses no quality level"
        )
    return [settings.replace(quality_level=float(level)) for level in LEVELS]


def new_result_dir(root: Path) -> Path:
    """A fresh folder for one request's files; folders older than an hour are removed."""
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - RESULT_MAX_AGE_S
    for old in root.iterdir():
        if old.is_dir() and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="gen-", dir=root))


def generate_clips(
    models,
    prompt: str,
    settings: GenerationSettings,
    out_dir: Path,
    name_prefix: str = "",
    progress: bool = True,
    audio_inputs: Mapping[str, Any] | None = None,
) -> list[Clip]:
    """Generates one prompt, writes WAVs and sidecars, and scores and draws each clip.

    Args:
        models: The app's :class:`~qamdt.app.models.AppModels`.
        prompt: The prompt, without a quality prefix.
        settings: Complete settings (from :func:`build_settings`).
        out_dir: Where the files go.
        name_prefix: Put in front of every file name.
        progress: Report the sampler's steps (the page's progress bar follows them).
        audio_inputs: The input audio of an edit, by pipeline argument (``init_audio``,
            ``inpaint_audio`` or ``continue_audio``).

    Returns:
        The clips, best CLAP score first when a CLAP scorer is loaded.
    """
    from qamdt.app.plots import spectrogram_png
    from qamdt.audio_io import load_audio
    from qamdt.generation.writer import generate_to_folder

    wavs = generate_to_folder(
        models.pipeline,
        [prompt],
        settings,
        out_dir,
        batch_size=1,
        clap=models.clap,
        progress=progress,
        name_prefix=name_prefix,
        model=models.model_dir,
        audio_inputs=audio_inputs,
    )
    rate = models.pipeline.spec.sample_rate
    waves = [load_audio(wav, allow_silent=True)[0] for wav in wavs]
    pmos = models.pmos(waves, rate)
    level = settings.quality_level if settings.guidance != "negative-prompt" else None
    clips = []
    for i, (wav, wave) in enumerate(zip(wavs, waves, strict=True)):
        sidecar = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
        clip = Clip(
            wav=wav,
            sidecar=wav.with_suffix(".json"),
            spectrogram=wav.with_suffix(".png"),
            quality_level=level,
            clap=sidecar.get("clap_score"),
            rank=i,
        )
        if pmos is not None:
            clip.pmos = pmos[i]
            labels = models.label(pmos[i])
            if labels is not None:
                clip.level, clip.prefix = labels
        spectrogram_png(wave, models.pipeline.spec, clip.spectrogram, clip.caption())
        clips.append(clip)
    return clips

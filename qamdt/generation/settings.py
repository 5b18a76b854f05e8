"""Generation settings: one dataclass from the command line, the demo and the app to the sidecar.

Every sampling setting of a pipeline call is a field of :class:`GenerationSettings`, under
its diffusers name (``guidance_scale``, ``num_inference_steps``, ``audio_length_in_s``, ...).
It is validated once, when built, so a bad value stops a run before any model is loaded or
any step sampled, with an error that names the field.

Settings come in layers: the dataclass defaults, then a pipeline folder's
``generation_defaults`` (a partial mapping in ``pipeline.json``), then what the caller set
explicitly; :meth:`GenerationSettings.resolve` stacks them in that order.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

from qamdt.errors import ConfigError, unknown_keys_error
from qamdt.quality import NULL_LEVEL, NUM_LEVELS

DEFAULT_GUIDANCE_SCALE = 3.5
"""The paper's classifier-free guidance scale."""

GUIDANCE_MODES = ("quality", "released", "negative-prompt")
"""See :mod:`qamdt.generation.pipeline`."""

MAX_AUDIO_LENGTH_IN_S = 600.0
"""Longest audio one call may ask for (beyond one window, time grows with the length)."""

MAX_WINDOW_OVERLAP = 0.75
"""Largest share of a window that the next one may repeat."""


class SettingsError(ConfigError):
    """A generation setting with a bad value; ``field`` names it."""

    def __init__(self, field: str, reason: str, where: str | None = None):
        super().__init__(f"{where}: {field}: {reason}" if where else f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """The settings of one generation call, shared by every prompt in it.

    Attributes:
        quality_level: Requested level 1..5; a float interpolates between the two
            neighbouring level embeddings; None (or 0) uses the null level.
        negative_prompt: Text of the negative branch, or one per prompt (None: empty
            text, or "low quality" for ``guidance="negative-prompt"``).
        negative_quality_level: Level of the negative branch (None: 1 for "quality", 3
            for "released"; 0 is the null level, plain classifier-free guidance on the
            quality token).
        guidance: "quality" (the paper's eq. 7), "released" (the authors' code) or
            "negative-prompt" (eq. 11, no quality tokens).
        guidance_scale: Classifier-free guidance scale (1 turns guidance off).
        guidance_rescale: Share of the guided prediction rescaled to the positive
            branch's spread (Lin et al. 2023), in [0, 1]; 0 turns it off.
        guidance_interval: ``(low, high)`` training timesteps outside which the positive
            branch alone is used (Kynkaeaenniemi et al. 2024); None guides every step.
        num_inference_steps: Sampler steps (the paper: 200 DDIM steps).
        scheduler: Sampler name: "ddim", "dpmsolver++", "unipc", "euler", "pndm", "ddpm".
        eta: DDIM eta, >= 0 (the released code uses 1.0).
        audio_length_in_s: Seconds of audio (None: the audio preset's clip length).
        num_waveforms_per_prompt: Candidates per prompt.
        seed: Seed of the starting noise (None: unseeded; files written to a folder
            start at 0).
        strength: Audio-to-audio (``init_audio``): share of the schedule run from the
            input's noised latent, in [0, 1] (SDEdit); 0 returns the input's VAE round
            trip, 1 ignores the input.
        inpaint_ranges: Inpainting (``inpaint_audio``): ``((start, end), ...)`` seconds
            of the input to regenerate; the rest is kept.
        repaint_resamples: Passes over each stretch of steps when frames are kept
            (RePaint's r; 1: a single pass). Needs the "ddim" or "ddpm" sampler.
        repaint_jump: Steps per stretch that is passed over again (RePaint's jump).
        window_seconds: Seconds per sampling window: a longer piece is made of windows,
            each conditioned on its overlap with the one before (None: the audio
            preset's clip, the length the model was trained for).
        window_overlap: Share of a window that the next one repeats as context, in
            (0, 0.75].
    """

    quality_level: float | None = 5.0
    negative_prompt: str | tuple[str, ...] | None = None
    negative_quality_level: float | None = None
    guidance: str = "quality"
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    num_inference_steps: int = 200
    scheduler: str = "ddim"
    eta: float = 0.0
    audio_length_in_s: float | None = None
    num_waveforms_per_prompt: int = 1
    seed: int | None = None
    strength: float = 0.5
    inpaint_ranges: tuple[tuple[float, float], ...] | None = None
    repaint_resamples: int = 1
    repaint_jump: int = 10
    window_seconds: float | None = None
    window_overlap: float = 0.25

    def __post_init__(self):
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        from qamdt.diffusion.inpainting import RESAMPLING_SCHEDULERS

        if self.repaint_resamples > 1 and self.scheduler not in RESAMPLING_SCHEDULERS:
            raise SettingsError(
                "repaint_resamples",
                f"resampling needs a sampler of {list(RESAMPLING_SCHEDULERS)}, "
                f"not '{self.scheduler}'",
            )

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], where: str = "generation settings"
    ) -> GenerationSettings:
        """Settings from a (partial) mapping; missing fields keep their defaults.

        Raises:
            ConfigError: Naming ``where`` and the unknown key or bad field.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
        check_setting_names(values, where)
        try:
            return cls(**values)
        except SettingsError as error:
            raise SettingsError(error.field, error.reason, where) from None

    @classmethod
    def resolve(
        cls,
        *layers: GenerationSettings | Mapping[str, Any] | None,
        where: str = "generation settings",
    ) -> GenerationSettings:
        """Stacks settings: each layer overrides those before it, the defaults underneath.

        A mapping sets only its keys; a :class:`GenerationSettings` sets every field.
        Typical order: ``resolve(pipeline.generation_defaults, explicit)``.
        """
        values: dict[str, Any] = {}
        for layer in layers:
            if isinstance(layer, GenerationSettings):
                values = dataclasses.asdict(layer)
            elif layer is not None:
                check_setting_names(layer, where)
                values.update(layer)
        return cls.from_dict(values, where)

    def replace(self, **changes: Any) -> GenerationSettings:
        """A validated copy with some fields changed."""
        check_setting_names(changes, "generation settings")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (tuples as lists), every field."""
        values = dataclasses.asdict(self)
        for name in ("negative_prompt", "guidance_interval"):
            if isinstance(values[name], tuple):
                values[name] = list(values[name])
        if values["inpaint_ranges"] is not None:
            values["inpaint_ranges"] = [list(r) for r in values["inpaint_ranges"]]
        return values


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(GenerationSettings))


def check_setting_names(values: Mapping[str, Any], where: str) -> None:
    """Raises ``ConfigError`` naming keys that are no generation setting (with a guess)."""
    unknown = sorted(set(values) - set(SETTING_NAMES))
    if unknown:
        raise unknown_keys_error(unknown, SETTING_NAMES, where, noun="generation setting")


def partial_settings(values: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Checks a partial settings mapping (names and values) and returns a copy of it."""
    values = dict(values or {})
    GenerationSettings.from_dict(values, where)
    return values


# ------------------------------------------------------------------------------ checks


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingsError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SettingsError(name, f"must be finite, got {value}")
    return value


def _level(name: str, value: Any) -> float | None:
    if value is None:
        return None
    _number(name, value)
    if value != NULL_LEVEL and not 1 <= value <= NUM_LEVELS:
        raise SettingsError(
            name, f"must be within 1..{NUM_LEVELS}, or {NULL_LEVEL} for the null level, got {value}"
        )
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingsError(name, f"must be an integer, got {value!r}")
    if value < 1:
        raise SettingsError(name, f"must be >= 1, got {value}")
    return int(value)


def _negative_prompt(name: str, value: Any) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SettingsError(
        name, f"must be a string, a non-empty list of strings or null, got {value!r}"
    )


def _guidance(name: str, value: Any) -> str:
    if value not in GUIDANCE_MODES:
        raise SettingsError(name, f"unknown '{value}'; known: {list(GUIDANCE_MODES)}")
    return value


def _rescale(name: str, value: Any) -> float:
    from qamdt.diffusion.sampling import check_guidance_rescale

    try:
        check_guidance_rescale(_number(name, value))
    except ValueError:
        raise SettingsError(name, f"must lie in [0, 1], got {value}") from None
    return value


def _interval(name: str, value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise SettingsError(name, f"must be (low, high) or null, got {value!r}")
    from qamdt.diffusion.sampling import check_guidance_interval

    interval = tuple(_number(name, v) for v in value)
    try:
        check_guidance_interval(interval)
    except ValueError:
        raise SettingsError(
            name, f"must be (low, high) with 0 <= low <= high, got {list(value)}"
        ) from None
    return interval


def _scheduler(name: str, value: Any) -> str:
    from qamdt.diffusion.schedule import SAMPLERS

    if value not in SAMPLERS:
        raise SettingsError(name, f"unknown '{value}'; known: {sorted(SAMPLERS)}")
    return value


def _eta(name: str, value: Any) -> float:
    if _number(name, value) < 0:
        raise SettingsError(name, f"must be >= 0, got {value}")
    return value


def _length(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not 0 < _number(name, value) <= MAX_AUDIO_LENGTH_IN_S:
        raise SettingsError(
            name, f"must be > 0 and at most {MAX_AUDIO_LENGTH_IN_S:g} seconds, got {value}"
        )
    return value


def _seed(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise SettingsError(name, f"must be a non-negative integer or null, got {value!r}")
    return int(value)


def _strength(name: str, value: Any) -> float:
    if not 0 <= _number(name, value) <= 1:
        raise SettingsError(name, f"must lie in [0, 1], got {value}")
    return value


def _ranges(name: str, value: Any) -> tuple[tuple[float, float], ...] | None:
    if value is None:
        return None
    pairs = [] if isinstance(value, (str, bytes)) else value
    if not hasattr(pairs, "__len__") or not pairs:
        raise SettingsError(
            name, f"must be a non-empty list of (start, end) or null, got {value!r}"
        )
    ranges = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise SettingsError(name, f"each range must be (start, end) in seconds, got {pair!r}")
        start, end = (_number(name, v) for v in pair)
        if not 0 <= start < end:
            raise SettingsError(name, f"need 0 <= start < end, got ({start}, {end})")
        ranges.append((start, end))
    return tuple(sorted(ranges))


def _window(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not 0 < _number(name, value) <= MAX_AUDIO_LENGTH_IN_S:
        raise SettingsError(name, f"must be > 0 seconds, got {value}")
    return value


def _overlap(name: str, value: Any) -> float:
    if not 0 < _number(name, value) <= MAX_WINDOW_OVERLAP:
        raise SettingsError(name, f"must lie in (0, {MAX_WINDOW_OVERLAP}], got {value}")
    return value


_CHECKS = {
    "quality_level": _level,
    "negative_prompt": _negative_prompt,
    "negative_quality_level": _level,
    "guidance": _guidance,
    "guidance_scale": _number,
    "guidance_rescale": _rescale,
    "guidance_interval": _interval,
    "num_inference_steps": _count,
    "scheduler": _scheduler,
    "eta": _eta,
    "audio_length_in_s": _length,
    "num_waveforms_per_prompt": _count,
    "seed": _seed,
    "strength": _strength,
    "inpaint_ranges": _ranges,
    "repaint_resamples": _count,
    "repaint_jump": _count,
    "window_seconds": _window,
    "window_overlap": _overlap,
}

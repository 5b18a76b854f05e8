"""The settings of one ``qamdt curate`` job, checked once and kept beside its output."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from qamdt.config import ConfigBase
from qamdt.errors import ConfigError
from qamdt.manifest.stages import MIN_CLIP_SECONDS

SETTINGS_NAME = "curation.json"
"""The sidecar in OUT: the settings, the models' content hashes and each step's summary."""

LEVEL_RULES = ("five-bin", "eq1", "quantile")

RESULT_FIELDS = (
    "mos",
    "clap",
    "captioner",
    "merger",
    "llm_model",
    "rho1",
    "rho2",
    "rho3",
    "stats",
    "level_rule",
    "prefix_sigmas",
    "min_seconds",
)
"""Settings that change the curated rows; a job resumed with others is refused."""


@dataclasses.dataclass(frozen=True)
class CurationSettings(ConfigBase):
    """What ``qamdt curate`` does (one field per command-line option).

    Attributes:
        mos: MOS model folder or name (p-MOS labelling).
        clap: CLAP scorer folder or name; None skips caption refinement.
        captioner: Captioner folder or name (needs ``clap``); None scores the generated
            captions already in the rows.
        merger: ``"rule"`` or ``"llm"`` (eq. 10).
        llm_model: Local instruct model folder of the ``llm`` merger.
        rho1: Eq. 8 threshold (number or ``"pX"``).
        rho2: Eq. 9 threshold.
        rho3: Eq. 10 threshold.
        stats: A saved ``quality_stats.json`` to apply instead of fitting new statistics.
        level_rule: Level rule when fitting (``five-bin``, ``eq1``, ``quantile``).
        prefix_sigmas: Prefix thresholds at mu -/+ this many sigma when fitting.
        select: ``--select`` expressions (see :mod:`qamdt.curation.select`).
        batch_size: Clips per model call.
        workers: Processes decoding audio ahead of the models (0: one thread).
        min_seconds: Shortest clip scored or captioned.
        part: ``(I, N)``: label and score part I of N only (``--shard I/N``).
        resume_anyway: Resume stage shards of other models or settings.
        report_clips: Players per level and end (lowest, highest) in the report.
    """

    mos: str
    clap: str | None = None
    captioner: str | None = None
    merger: str = "rule"
    llm_model: str | None = None
    rho1: float | str = 0.1
    rho2: float | str = 0.1
    rho3: float | str = 0.25
    stats: str | None = None
    level_rule: str = "five-bin"
    prefix_sigmas: float = 1.25
    select: tuple[str, ...] = ()
    batch_size: int = 16
    workers: int = 0
    min_seconds: float = MIN_CLIP_SECONDS
    part: tuple[int, int] | None = None
    resume_anyway: bool = False
    report_clips: int = 2

    def __post_init__(self) -> None:
        from captioning.refine import RefineSettings
        from qamdt.curation.select import Selection

        if self.captioner is not None and self.clap is None:
            raise ConfigError("--captioner: needs --clap (captions are scored with CLAP)")
        if self.merger not in ("rule", "llm"):
            raise ConfigError(f"--merger: choose 'rule' or 'llm', got {self.merger!r}")
        if self.merger == "llm" and self.llm_model is None:
            raise ConfigError("--merger llm: needs --llm-model FOLDER (a local instruct model)")
        RefineSettings(self.rho1, self.rho2, self.rho3)
        if self.stats is not None and not Path(self.stats).is_file():
            raise ConfigError(f"--stats: {self.stats} not found")
        if self.level_rule not in LEVEL_RULES:
            raise ConfigError(f"--level-rule: choose one of {list(LEVEL_RULES)}")
        if not (math.isfinite(self.prefix_sigmas) and self.prefix_sigmas > 0):
            raise ConfigError("--prefix-sigmas: must be a positive number")
        for name, low in (("batch_size", 1), ("workers", 0), ("report_clips", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')}: must be a whole number >= {low}")
        if not (math.isfinite(self.min_seconds) and self.min_seconds >= 0):
            raise ConfigError("--min-seconds: must be a finite number >= 0")
        Selection.parse(self.select)

    def refine_settings(self):
        """The thresholds as :class:`~captioning.refine.RefineSettings`."""
        from captioning.refine import RefineSettings

        return RefineSettings(self.rho1, self.rho2, self.rho3)

    def result_settings(self) -> dict[str, Any]:
        """The settings that change the curated rows (:data:`RESULT_FIELDS`)."""
        return {name: getattr(self, name) for name in RESULT_FIELDS}

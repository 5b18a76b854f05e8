"""The models and data the app serves, loaded once when it starts.

The generation pipeline is required; the MOS predictor, the CLAP scorer, the captioner
and the manifest are optional, and the parts of the page that need them say so when they
are missing. The quality statistics (p-MOS -> level and prefix) come from the manifest's
``quality_stats.json`` when a manifest is given, else from the pipeline folder's.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamdt.errors import ConfigError
from qamdt.quality import QUALITY_STATS_NAME


@dataclasses.dataclass
class AppModels:
    """Everything the app's tabs use.

    Attributes:
        pipeline: The :class:`~qamdt.generation.pipeline.QAMDTPipeline`.
        model_dir: The pipeline folder it was loaded from.
        mos: A :class:`~mos_predictor.base.MosModel`, or None.
        clap: A :class:`~captioning.base.ClapScorer`, or None.
        captioner: A :class:`~captioning.base.Captioner`, or None.
        stats: The :class:`~mos_predictor.stats.QualityStats` levels are read under, or None.
        stats_source: The file the statistics came from.
        manifest: The manifest the Dataset tab shows, or None.
    """

    pipeline: Any
    model_dir: str
    mos: Any = None
    clap: Any = None
    captioner: Any = None
    stats: Any = None
    stats_source: str | None = None
    manifest: Path | None = None

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        mos: str | os.PathLike | None = None,
        clap: str | os.PathLike | None = None,
        captioner: str | os.PathLike | None = None,
        manifest: str | os.PathLike | None = None,
        torch_dtype=None,
    ) -> AppModels:
        """Loads every model once.

        Args:
            model: Pipeline folder (``qamdt generate --model``).
            mos: MOS model folder (``qamdt mos predict --model``).
            clap: CLAP scorer folder (``qamdt captions score --model``).
            captioner: Captioner folder (``qamdt captions caption --model``).
            manifest: A manifest (JSONL) for the Dataset tab.
            torch_dtype: The pipeline's dtypes (``QAMDTPipeline.from_pretrained``).

        Raises:
            QamdtError: Naming the folder or file that cannot be loaded.
        """
        from qamdt.generation.pipeline import QAMDTPipeline

        manifest_path = None
        if manifest is not None:
            manifest_path = Path(manifest)
            if not manifest_path.is_file():
                raise ConfigError(f"--manifest {manifest_path}: no such file")
        pipeline = QAMDTPipeline.from_pretrained(model, torch_dtype=torch_dtype)
        mos_model = clap_model = captioner_model = None
        if mos is not None:
            from mos_predictor.models import load_mos_model

            mos_model = load_mos_model(mos)
        if clap is not None:
            from captioning.base import load_clap

            clap_model = load_clap(clap)
        if captioner is not None:
            from captioning.base import load_captioner

            captioner_model = load_captioner(captioner)
        stats, source = _quality_stats(pipeline, Path(model), manifest_path)
        return cls(
            pipeline=pipeline,
            model_dir=str(model),
            mos=mos_model,
            clap=clap_model,
            captioner=captioner_model,
            stats=stats,
            stats_source=source,
            manifest=manifest_path,
        )

    # ------------------------------------------------------------------ scoring

    def pmos(self, audio: list[np.ndarray], sample_rate: int) -> list[float] | None:
        """p-MOS of each clip, or None without a MOS model."""
        if self.mos is None:
            return None
        with torch.no_grad():
            return [r["omq"] for r in self.mos.predict(list(audio), sample_rate)]

    def clap_scores(
        self, audio: list[np.ndarray], sample_rate: int, texts: list[str]
    ) -> list[float] | None:
        """CLAP score of clip ``i`` against text ``i``, or None without a CLAP scorer."""
        if self.clap is None:
            return None
        with torch.no_grad():
            scores = self.clap.text_audio_scores(list(audio), sample_rate, list(texts))
        return [float(s) for s in scores]

    def label(self, pmos: float) -> tuple[int, str] | None:
        """Quality level and prefix of a p-MOS under the loaded statistics, or None."""
        if self.stats is None:
            return None
        return self.stats.level_for(pmos), self.stats.prefix_for(pmos)

    def describe(self) -> dict[str, Any]:
        """What is loaded, for the page's header."""
        return {
            "pipeline": self.model_dir,
            "sample_rate": self.pipeline.spec.sample_rate,
            "mos": self.mos is not None,
            "clap": self.clap is not None,
            "captioner": self.captioner is not None,
            "quality_stats": self.stats_source,
            "manifest": str(self.manifest) if self.manifest is not None else None,
        }


def _quality_stats(pipeline, model_dir: Path, manifest: Path | None):
    from mos_predictor.stats import QualityStats

    if manifest is not None and (manifest.parent / QUALITY_STATS_NAME).is_file():
        path = manifest.parent / QUALITY_STATS_NAME
        return QualityStats.load(path), str(path)
    if pipeline.quality_stats is not None:
        path = model_dir / QUALITY_STATS_NAME
        return QualityStats.from_dict(pipeline.quality_stats, where=str(path)), str(path)
    return None, None

"""Building MOS models by kind and loading saved ones by path or name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mos_predictor import embedded, ssl, text_aware  # noqa: F401  (register the kinds)
from mos_predictor.base import MODEL_REGISTRY, MosModel, get_model_class
from mos_predictor.config import MosModelConfig
from qamdt.errors import CheckpointError

MODELS_ENV = "QAMDT_MODELS"
DEFAULT_MODELS_DIR = Path("~/.cache/qamdt/models")


def build_mos_model(config: MosModelConfig | Mapping[str, Any]) -> MosModel:
    """Builds a fresh model of the kind the config names.

    Pretrained encoders named in the config (``ssl_model``, ``text_model``) are loaded
    from their local folders; everything else is randomly initialised.

    Args:
        config: A :class:`MosModelConfig` or a dict for ``MosModelConfig.from_dict``.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: On an invalid config or an encoder that cannot be loaded.
    """
    if not isinstance(config, MosModelConfig):
        config = MosModelConfig.from_dict(config)
    return get_model_class(config.kind)(config)


def model_search_dirs() -> list[Path]:
    """Folders searched for models by name: each entry of ``$QAMDT_MODELS``, then the cache.

    Returns:
        The folders, in search order (``$QAMDT_MODELS`` may list several, separated by
        ``os.pathsep``).
    """
    dirs = [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return [*dirs, DEFAULT_MODELS_DIR.expanduser()]


def load_mos_model(
    name_or_path: str | os.PathLike, device: str | torch.device | None = None
) -> MosModel:
    """Loads a saved MOS model from a folder, or by name from the model folders.

    Args:
        name_or_path: A saved model's folder, or a name looked up as
            ``<dir>/<name>`` in each of :func:`model_search_dirs`.
        device: Where to put the model; ``None`` keeps it on the CPU.

    Returns:
        The model, in eval mode.

    Raises:
        CheckpointError: If no saved model is found (the message lists where it looked)
            or its files do not match.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return MosModel.from_pretrained(path, device=device)
    looked = [str(path)]
    name = os.fspath(name_or_path)
    if not path.is_absolute() and os.sep not in name and (os.altsep or os.sep) not in name:
        for folder in model_search_dirs():
            candidate = folder / name
            looked.append(str(candidate))
            if candidate.is_dir():
                return MosModel.from_pretrained(candidate, device=device)
    raise CheckpointError(
        f"no saved MOS model '{name}'; looked in: {', '.join(looked)} "
        f"(set ${MODELS_ENV} to add folders)"
    )


__all__ = ["MODEL_REGISTRY", "build_mos_model", "load_mos_model", "model_search_dirs"]

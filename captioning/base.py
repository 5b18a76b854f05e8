"""The two interfaces of the caption-refinement stage: captioners and CLAP scorers.

Every captioner turns audio into sentences; every CLAP scorer embeds audio and text into
one space where cosine similarity measures agreement. Implementations register under a
``kind`` and save to a folder holding ``config.json`` (with that kind) and their weights,
so ``load_captioner`` / ``load_clap`` can rebuild any of them from the folder alone.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qamdt.errors import CheckpointError, ConfigError, QamdtError

CONFIG_NAME = "config.json"

_CAPTIONERS: dict[str, type] = {}
_CLAPS: dict[str, type] = {}


def check_texts(texts: list[str | None], batch_size: int) -> list[str]:
    """Texts as strings (``None`` becomes the empty text), after checking the batch.

    Raises:
        ValueError: On an empty list or a batch size below 1.
    """
    if len(texts) == 0:
        raise ValueError("no texts given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return ["" if t is None else str(t) for t in texts]


class Captioner(abc.ABC):
    """Audio in, one caption per clip out."""

    kind: str = ""
    sample_rate: int = 16000

    @abc.abstractmethod
    def caption(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> list[str]:
        """Captions a batch of clips (any length, any rate)."""

    @abc.abstractmethod
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json`` (with ``kind``) and the weights into ``directory``."""

    @classmethod
    @abc.abstractmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Captioner:
        """Rebuilds a captioner saved by ``save_pretrained``."""


class ClapScorer(abc.ABC):
    """Audio and text embedded in one space; cosine similarity scores agreement."""

    kind: str = ""
    sample_rate: int = 48000

    @abc.abstractmethod
    def embed_audio(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> np.ndarray:
        """``(N, D)`` L2-normalised audio embeddings."""

    @abc.abstractmethod
    def embed_text(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """``(N, D)`` L2-normalised text embeddings."""

    def text_audio_scores(
        self, audio: list[np.ndarray], sample_rates: int | list[int], texts: list[str]
    ) -> np.ndarray:
        """Cosine similarity of clip ``i`` with text ``i``, shape ``(N,)``."""
        if len(audio) != len(texts):
            raise ValueError(f"{len(audio)} clips but {len(texts)} texts")
        return np.sum(self.embed_audio(audio, sample_rates) * self.embed_text(texts), axis=1)

    def text_text_scores(self, a: list[str], b: list[str]) -> np.ndarray:
        """Cosine similarity of ``a[i]`` with ``b[i]``, shape ``(N,)``."""
        if len(a) != len(b):
            raise ValueError(f"{len(a)} texts against {len(b)}")
        return np.sum(self.embed_text(list(a)) * self.embed_text(list(b)), axis=1)

    @abc.abstractmethod
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json`` (with ``kind``) and the weights into ``directory``."""

    @classmethod
    @abc.abstractmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ClapScorer:
        """Rebuilds a scorer saved by ``save_pretrained``."""


def _register(registry: dict[str, type], kind: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if kind in registry:
            raise ConfigError(f"kind {kind!r} is registered twice")
        cls.kind = kind
        registry[kind] = cls
        return cls

    return decorate


def register_captioner(kind: str) -> Callable[[type], type]:
    """Class decorator registering a ``Captioner`` implementation under ``kind``."""
    return _register(_CAPTIONERS, kind)


def register_clap(kind: str) -> Callable[[type], type]:
    """Class decorator registering a ``ClapScorer`` implementation under ``kind``."""
    return _register(_CLAPS, kind)


def resolve_model_dir(path_or_name: str | os.PathLike) -> Path:
    """A folder path, or a name looked up under ``$QAMDT_MODELS`` and ``~/.cache/qamdt/models``.

    Raises:
        QamdtError: Listing every place looked at when nothing is found.
    """
    path = Path(path_or_name)
    if path.is_dir():
        return path
    roots = [Path(p) for p in os.environ.get("QAMDT_MODELS", "").split(os.pathsep) if p]
    roots.append(Path.home() / ".cache" / "qamdt" / "models")
    for root in roots:
        if (root / str(path_or_name)).is_dir():
            return root / str(path_or_name)
    looked = ", ".join(str(p) for p in [path, *(r / str(path_or_name) for r in roots)])
    raise QamdtError(f"no model folder '{path_or_name}'; looked in {looked}")


def read_saved_config(
    directory: str | os.PathLike, kind: str, what: str = "captioner"
) -> tuple[dict, Path]:
    """The ``config.json`` of a folder saved by a ``save_pretrained`` of ``kind``.

    Args:
        directory: The saved folder.
        kind: The ``kind`` the file must name.
        what: What the folder holds, for messages ("captioner", "CLAP scorer").

    Returns:
        Its values and its path (for messages).

    Raises:
        CheckpointError: If the file is missing.
        ConfigError: If it is not JSON or was saved by another kind.
    """
    config_path = Path(directory) / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; not a saved {what}")
    try:
        values = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid JSON ({exc})") from None
    if values.get("kind") != kind:
        raise ConfigError(f"{config_path}: kind {values.get('kind')!r} is not {kind!r}")
    return values, config_path


def _load(registry: dict[str, type], path_or_name: str | os.PathLike, what: str):
    _import_implementations()
    directory = resolve_model_dir(path_or_name)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise QamdtError(f"{config_path}: missing; not a saved {what}")
    kind = json.loads(config_path.read_text()).get("kind")
    if kind not in registry:
        raise ConfigError(f"{config_path}: unknown {what} kind {kind!r}; known: {sorted(registry)}")
    return registry[kind].from_pretrained(directory)


def load_captioner(path_or_name: str | os.PathLike) -> Captioner:
    """Loads any saved captioner by folder or name."""
    return _load(_CAPTIONERS, path_or_name, "captioner")


def load_clap(path_or_name: str | os.PathLike) -> ClapScorer:
    """Loads any saved CLAP scorer by folder or name."""
    return _load(_CLAPS, path_or_name, "CLAP scorer")


def _import_implementations() -> None:
    """Imports the modules that register implementations.

    They import optional packages (laion-clap, ...) only when a model is built, so importing
    them always works.
    """
    import importlib

    for module in IMPLEMENTATION_MODULES:
        importlib.import_module(module)


# Modules whose import registers a captioner or a scorer.
IMPLEMENTATION_MODULES = (
    "captioning.embedded_captioner",
    "captioning.lp_musiccaps",
    "captioning.musilingo",
    "captioning.embedded_clap",
    "captioning.hf_clap",
    "captioning.laion_clap",
)

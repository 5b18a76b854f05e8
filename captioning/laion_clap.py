"""CLAP scorer on an official LAION-CLAP checkpoint via the ``laion_clap`` package (kind ``laion``).

Any checkpoint of https://github.com/LAION-AI/CLAP loads from a local path, fusion or not:
``630k-best.pt`` / ``630k-audioset-best.pt`` (``HTSAT-tiny``, no fusion),
``630k-fusion-best.pt`` / ``630k-audioset-fusion-best.pt`` (``HTSAT-tiny``, fusion),
``music_audioset_epoch_15_esc_90.14.pt`` and the other music/speech checkpoints
(``HTSAT-base``, no fusion). The config names the architecture (``amodel``,
``enable_fusion``) to match the checkpoint.

Installation: ``laion_clap`` is optional and imported only when a scorer is built. Its
module ``training.data`` imports torchvision (and its fusion path torchaudio), for which
the CPU-only torch here has no matching build, so install it with
``pip install laion-clap --no-deps`` plus its runtime dependencies (torchlibrosa, ftfy,
braceexpand, webdataset, wget, h5py, pandas, progressbar) and a torchvision/torchaudio
matching torch. At construction ``laion_clap`` loads the ``roberta-base`` tokenizer with
``RobertaTokenizer.from_pretrained('roberta-base')``: it must already be in the
Hugging Face cache (``HF_HOME``), and ``HF_HUB_OFFLINE=1`` keeps it from going online.

Long audio: clips are resampled to 48 kHz, quantised to 16 bits as LAION's own loaders do,
and cut into windows of ``window_seconds`` (10 s, the models' input length) by
:func:`qamdt.audio_windows.window_starts` (one centred window when the clip is at most 5 %
longer, else evenly spaced windows covering it); the clip's embedding is the normalised
mean of the normalised window embeddings. No window exceeds 10 s, so the package's random
truncation (``rand_trunc``) and random fusion chunks never apply: fusion models run on
each window as on a short clip. Shorter clips are repeat-padded by the package.

Checkpoints are pickles. From torch 2.6 on, ``torch.load`` defaults to
``weights_only=True``; a checkpoint that then fails to load is loaded with full unpickling
only when the config sets ``trust_checkpoint`` (only for files from a trusted source).

A saved scorer is a folder with only ``config.json``: ``ckpt`` (absolute, or relative to
the folder), ``enable_fusion``, ``amodel``, ``tmodel``, ``window_seconds`` and
``trust_checkpoint``; the checkpoint itself is not copied.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from captioning.base import CONFIG_NAME, ClapScorer, check_texts, register_clap
from qamdt.audio_io import prepare_clips
from qamdt.audio_windows import split_windows
from qamdt.errors import ConfigError, QamdtError
from qamdt.json_files import write_json

SAMPLE_RATE = 48000
MAX_WINDOW_SECONDS = 10.0
_SETTINGS = ("ckpt", "enable_fusion", "amodel", "tmodel", "window_seconds", "trust_checkpoint")
INSTALL_HINT = (
    "the 'laion' CLAP scorer needs the laion_clap package: pip install laion-clap --no-deps, "
    "then its runtime dependencies (torchlibrosa, ftfy, braceexpand, webdataset, wget, h5py, "
    "pandas, progressbar) and torchvision (plus torchaudio for fusion models) built for the "
    "installed torch; there is no CPU torchvision build for this torch here. It also needs "
    "the roberta-base tokenizer in the Hugging Face cache"
)


def _import_laion_clap() -> Any:
    try:
        import laion_clap
    except ImportError as exc:
        raise QamdtError(f"{INSTALL_HINT} (import failed: {exc})") from exc
    return laion_clap


def _quantise(wave: np.ndarray) -> np.ndarray:
    """16-bit round trip, as LAION's loaders apply before embedding."""
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0


@contextlib.contextmanager
def _full_unpickling() -> Iterator[None]:
    """Lets ``torch.load`` calls without ``weights_only`` unpickle fully (torch >= 2.6)."""
    name = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@register_clap("laion")
class LaionClapScorer(ClapScorer):
    """An official LAION-CLAP checkpoint behind the :class:`ClapScorer` interface.

    Args:
        ckpt: Path of the checkpoint (``.pt``).
        enable_fusion: Whether the checkpoint is a fusion model.
        amodel: Audio encoder architecture (``"HTSAT-tiny"``, ``"HTSAT-base"``, ...).
        tmodel: Text encoder architecture (``"roberta"`` for the official checkpoints).
        window_seconds: Window length for long audio, at most 10 s.
        trust_checkpoint: Fall back to full unpickling when a ``weights_only`` load fails.
        device: Where to run; ``None`` lets laion_clap pick (CUDA when available).

    Raises:
        QamdtError: If laion_clap is missing, the checkpoint is missing or does not match
            the architecture.
        ConfigError: On an invalid setting.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        ckpt: str | os.PathLike,
        *,
        enable_fusion: bool = False,
        amodel: str = "HTSAT-tiny",
        tmodel: str = "roberta",
        window_seconds: float = MAX_WINDOW_SECONDS,
        trust_checkpoint: bool = False,
        device: str | None = None,
    ):
        if not 0 < float(window_seconds) <= MAX_WINDOW_SECONDS:
            raise ConfigError(
                f"window_seconds must be in (0, {MAX_WINDOW_SECONDS:g}], got {window_seconds}"
            )
        self.ckpt = Path(ckpt).expanduser().resolve()
        self.enable_fusion = bool(enable_fusion)
        self.amodel = str(amodel)
        self.tmodel = str(tmodel)
        self.window_seconds = float(window_seconds)
        self.window_samples = round(self.window_seconds * SAMPLE_RATE)
        self.trust_checkpoint = bool(trust_checkpoint)
        laion_clap = _import_laion_clap()
        if not self.ckpt.is_file():
            raise QamdtError(f"{self.ckpt}: no LAION-CLAP checkpoint there")
        try:
            self.module = laion_clap.CLAP_Module(
                enable_fusion=self.enable_fusion,
                amodel=self.amodel,
                tmodel=self.tmodel,
                device=device,
            )
        except OSError as exc:
            raise QamdtError(
                f"laion_clap could not load the roberta-base tokenizer ({exc}); put it in the "
                "Hugging Face cache first"
            ) from exc
        self._load_checkpoint()
        self.module.eval().requires_grad_(False)

    def _load_checkpoint(self) -> None:
        def load() -> None:
            try:
                self.module.load_ckpt(os.fspath(self.ckpt), verbose=False)
            except TypeError:  # laion_clap < 1.1.3 has no verbose argument
                self.module.load_ckpt(os.fspath(self.ckpt))

        try:
            try:
                load()
            except pickle.UnpicklingError as exc:
                if not self.trust_checkpoint:
                    raise QamdtError(
                        f"{self.ckpt}: torch.load(weights_only=True) refused it ({exc}); set "
                        "trust_checkpoint to unpickle it fully, only for a trusted file"
                    ) from exc
                with _full_unpickling():
                    load()
        except RuntimeError as exc:
            raise QamdtError(
                f"{self.ckpt}: does not fit amodel={self.amodel!r}, "
                f"enable_fusion={self.enable_fusion} ({str(exc).splitlines()[0]})"
            ) from exc

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return next(self.module.parameters()).device

    @torch.no_grad()
    def embed_audio(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> np.ndarray:
        """``(N, D)`` L2-normalised clip embeddings: the mean over each clip's windows.

        Args:
            audio: Mono or ``(channels, samples)`` float arrays, any rate and length.
            sample_rates: One rate for all clips or one per clip.
            batch_size: Windows per call.

        Returns:
            Float32 embeddings, one row per clip.

        Raises:
            ValueError: On an empty batch, mismatched rates or a bad batch size.
            AudioError: On NaN/inf samples.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Rows of one call must have one length: group windows by length.
        groups: dict[int, list[tuple[int, np.ndarray]]] = {}
        for index, wave in enumerate(prepare_clips(audio, sample_rates, SAMPLE_RATE)):
            for window in split_windows(_quantise(wave), self.window_samples):
                groups.setdefault(window.shape[0], []).append((index, window))
        sums = None
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                part = group[start : start + batch_size]
                x = torch.from_numpy(np.stack([w for _, w in part])).to(self.device)
                emb = self.module.get_audio_embedding_from_data(x=x, use_tensor=True)
                emb = F.normalize(emb.float(), dim=-1).cpu()
                if sums is None:
                    sums = torch.zeros((len(audio), emb.shape[1]))
                sums.index_add_(0, torch.tensor([o for o, _ in part]), emb)
        return F.normalize(sums, dim=-1).numpy().astype(np.float32)

    @torch.no_grad()
    def embed_text(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """``(N, D)`` L2-normalised text embeddings.

        Args:
            texts: Captions; ``None`` counts as the empty text.
            batch_size: Texts per call.

        Returns:
            Float32 embeddings, one row per text.

        Raises:
            ValueError: On an empty list or a bad batch size.
        """
        texts = check_texts(texts, batch_size)
        rows = []
        for start in range(0, len(texts), batch_size):
            emb = self.module.get_text_embedding(texts[start : start + batch_size], use_tensor=True)
            rows.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(rows).numpy().astype(np.float32)

    def settings(self) -> dict[str, Any]:
        """The ``config.json`` content."""
        return {
            "kind": self.kind,
            "ckpt": os.fspath(self.ckpt),
            "enable_fusion": self.enable_fusion,
            "amodel": self.amodel,
            "tmodel": self.tmodel,
            "window_seconds": self.window_seconds,
            "trust_checkpoint": self.trust_checkpoint,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json`` (the checkpoint's absolute path, not the checkpoint).

        Args:
            directory: The folder; created if missing.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / CONFIG_NAME, self.settings(), indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LaionClapScorer:
        """Builds the scorer a ``config.json`` describes.

        Args:
            path: Folder with ``config.json``; a relative ``ckpt`` is relative to it.

        Returns:
            The scorer.

        Raises:
            QamdtError: If the config is unreadable, laion_clap is missing or the
                checkpoint does not load.
            ConfigError: On an unknown or invalid setting.
        """
        directory = Path(path)
        config_path = directory / CONFIG_NAME
        try:
            values = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise QamdtError(f"{config_path}: cannot read the scorer config ({exc})") from exc
        if values.pop("kind", None) != "laion":
            raise ConfigError(f"{config_path}: kind is not 'laion'")
        unknown = sorted(set(values) - set(_SETTINGS))
        if unknown:
            raise ConfigError(f"{config_path}: unknown setting(s) {unknown}; known: {_SETTINGS}")
        if "ckpt" not in values:
            raise ConfigError(f"{config_path}: 'ckpt' (the checkpoint path) is required")
        values["ckpt"] = directory / Path(values["ckpt"]).expanduser()
        return cls(**values)

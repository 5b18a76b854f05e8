"""The interface every MOS model shares: forward, windowed ``predict``, safetensors save/load.

A model's forward pass takes a batch of fixed-length, normalised waveforms at
``config.sample_rate``. :meth:`MosModel.predict` wraps it for real use: clips of any length
and rate are resampled, normalised, cut into windows of ``config.window_seconds`` and the
window scores averaged per clip.

A saved model is a folder with ``config.json`` (the :class:`MosModelConfig` plus a format
version), ``model.safetensors`` (the state dict) and, for text-aware models, the tokenizer
files. Loading rebuilds the architecture from the config alone (pretrained encoders are
not fetched again) and then loads every weight strictly.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mos_predictor.config import MosModelConfig
from qamdt.audio_io import prepare_waveform
from qamdt.audio_windows import padded_windows
from qamdt.checkpoints import load_state_strict, read_state_file, save_state_file
from qamdt.errors import CheckpointError, ConfigError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
WEIGHTS_FORMAT_VERSION = "1"

MODEL_REGISTRY: dict[str, type[MosModel]] = {}


@dataclasses.dataclass
class MosOutput:
    """What a MOS model's forward pass returns.

    Attributes:
        omq: ``(B,)`` predicted overall quality, in MOS units.
        ta: ``(B,)`` predicted text alignment, for text-aware models; otherwise ``None``.
        aux_loss: Scalar regulariser to add to the training loss (Sinkhorn OT,
            distillation), or ``None`` when the model has none.
        kinds: ``(B, config.kind_outputs)`` logits of the degradation-kind head, or
            ``None`` without one.
    """

    omq: torch.Tensor
    ta: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    kinds: torch.Tensor | None = None


def register_mos_model(kind: str):
    """Class decorator that makes a :class:`MosModel` subclass buildable by its kind.

    Args:
        kind: The ``config.kind`` the class implements.

    Returns:
        The decorator.
    """

    def decorator(cls: type[MosModel]) -> type[MosModel]:
        cls.kind = kind
        MODEL_REGISTRY[kind] = cls
        return cls

    return decorator


def get_model_class(kind: str) -> type[MosModel]:
    """Returns the class that implements a model kind.

    Args:
        kind: A ``config.kind`` value.

    Returns:
        The registered class.

    Raises:
        ConfigError: If no class implements ``kind``.
    """
    import mos_predictor.models  # noqa: F401  (registers the model classes)

    try:
        return MODEL_REGISTRY[kind]
    except KeyError:
        raise ConfigError(
            f"kind: no MOS model of kind {kind!r}; known: {sorted(MODEL_REGISTRY)}"
        ) from None


class ScoreHead(nn.Sequential):
    """Dropout and a linear layer, or a one-hidden-layer MLP, giving one raw score.

    Args:
        in_features: Input width.
        hidden: Hidden width; 0 gives a single linear layer.
        dropout: Dropout probability on the input.
    """

    def __init__(self, in_features: int, hidden: int = 0, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden > 0:
            layers += [nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1)]
        else:
            layers.append(nn.Linear(in_features, 1))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw scores.

        Args:
            x: ``(B, in_features)``.

        Returns:
            ``(B,)``.
        """
        return super().forward(x).squeeze(-1)


class MosModel(nn.Module, abc.ABC):
    """Base class of the MOS models.

    Subclasses are built from a :class:`MosModelConfig` and implement :meth:`forward`.

    Args:
        config: The model's hyperparameters.
        load_pretrained: Load pretrained encoders from the folders the config names.
            ``from_pretrained`` passes False: it rebuilds the architecture from the config's
            stored encoder configs and then loads all weights itself.
        asset_dir: A saved model folder holding extra files (a tokenizer), if any.
    """

    kind: str = ""

    def __init__(
        self,
        config: MosModelConfig,
        *,
        load_pretrained: bool = True,
        asset_dir: str | os.PathLike | None = None,
    ):
        super().__init__()
        if not isinstance(config, MosModelConfig):
            raise TypeError(f"expected a MosModelConfig, got {type(config).__name__}")
        if self.kind and config.kind != self.kind:
            raise ConfigError(
                f"kind: {type(self).__name__} implements {self.kind!r}, config says {config.kind!r}"
            )
        self.config = config

    # ----------------------------------------------------------------------------- forward

    @abc.abstractmethod
    def forward(
        self,
        waveforms: torch.Tensor,
        texts: Sequence[str | None] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> MosOutput:
        """Scores a batch of windows.

        Args:
            waveforms: ``(B, S)`` mono, normalised audio at ``config.sample_rate``.
            texts: ``B`` captions, used by text-aware models only.
            lengths: ``(B,)`` valid samples per row when rows are zero-padded; pooling then
                ignores the padding. ``None`` means every sample is valid.

        Returns:
            The scores and the auxiliary loss.
        """

    def scale_omq(self, raw: torch.Tensor) -> torch.Tensor:
        """Maps the head's raw output to MOS units with ``score_offset`` and ``score_scale``."""
        return self.config.score_offset + self.config.score_scale * raw

    def scale_ta(self, raw: torch.Tensor) -> torch.Tensor:
        """Like :meth:`scale_omq` for the text-alignment head (``ta_offset``, ``ta_scale``)."""
        c = self.config
        offset = c.score_offset if c.ta_offset is None else c.ta_offset
        scale = c.score_scale if c.ta_scale is None else c.ta_scale
        return offset + scale * raw

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules kept in eval mode and without gradients; subclasses extend this."""
        return []

    def _freeze(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> MosModel:
        """Sets training mode, keeping frozen encoders in eval mode.

        Args:
            mode: Training (True) or evaluation (False).

        Returns:
            The model.
        """
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    # ----------------------------------------------------------------------------- predict

    def _windows(self, wave: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Cuts a clip into ``n = ceil(len / window)`` evenly spaced windows covering it.

        A clip shorter than a window is zero-padded; otherwise the first window starts at
        0, the last ends at the clip's end and the ones between are evenly spaced
        (neighbours overlap unless the clip is a whole number of windows long).
        """
        pairs = padded_windows(wave, self.config.window_samples)
        return np.stack([w for w, _ in pairs]).astype(np.float32), [n for _, n in pairs]

    def _prepare_clip(self, wave: np.ndarray, sample_rate: int, index: int) -> np.ndarray:
        wave = prepare_waveform(wave, sample_rate, self.config.sample_rate, f"<audio[{index}]>")
        if wave.shape[0] == 0:
            raise ValueError(f"<audio[{index}]>: no samples left after resampling")
        return wave

    def _run_batch(
        self,
        windows: list[np.ndarray],
        lengths: list[int],
        texts: list[str] | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        device = self.device
        batch = torch.from_numpy(np.stack(windows)).to(device)
        valid = torch.tensor(lengths, device=device)
        out = self(batch, texts=texts, lengths=valid)
        omq = out.omq.float().cpu().numpy().astype(np.float64)
        ta = None if out.ta is None else out.ta.float().cpu().numpy().astype(np.float64)
        return omq, ta

    @torch.no_grad()
    def predict(
        self,
        audio: Sequence[np.ndarray],
        sample_rates: int | Sequence[int],
        texts: Sequence[str | None] | None = None,
        batch_size: int = 16,
    ) -> list[dict[str, float]]:
        """Scores clips of any length and sample rate.

        Each clip is resampled to ``config.sample_rate``, normalised with
        ``normalize_waveform``, cut into ``ceil(len / window)`` windows of
        ``config.window_seconds`` (a shorter clip is zero-padded to one window, and pooling
        ignores the padding), and the window scores are averaged. Runs in eval mode
        without gradients on the model's device; the model's mode is restored afterwards.

        Args:
            audio: Mono ``(samples,)`` float arrays (``(channels, samples)`` is averaged to
                mono).
            sample_rates: One rate for all clips, or one per clip.
            texts: Captions, one per clip, for text-aware models (``None`` entries and a
                missing list mean the empty caption); ignored by other models.
            batch_size: Windows scored per forward pass.

        Returns:
            One dict per clip: ``{"omq": ...}``, plus ``"ta"`` for text-aware models.

        Raises:
            ValueError: If ``audio`` is empty or not a list, the rates or texts do not match
                the clips in number, or a clip is empty or holds NaN or infinite values
                (an ``AudioError`` naming ``<audio[i]>``).
        """
        if isinstance(audio, np.ndarray) or not isinstance(audio, Sequence):
            raise ValueError("audio must be a list of 1-D numpy arrays, one per clip")
        if len(audio) == 0:
            raise ValueError("audio is empty: pass at least one clip")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n_clips = len(audio)
        if isinstance(sample_rates, (int, np.integer)):
            rates = [int(sample_rates)] * n_clips
        else:
            rates = list(sample_rates)
            if len(rates) != n_clips:
                raise ValueError(f"got {len(rates)} sample rates for {n_clips} clips")
        uses_text = self.config.kind == "text-aware"
        if texts is not None and len(texts) != n_clips:
            raise ValueError(f"got {len(texts)} texts for {n_clips} clips")
        captions = [("" if t is None else str(t)) for t in (texts or [None] * n_clips)]

        omq_sum = np.zeros(n_clips)
        ta_sum = np.zeros(n_clips)
        counts = np.zeros(n_clips)
        pending: list[tuple[int, np.ndarray, int]] = []

        def flush() -> None:
            owners = [p[0] for p in pending]
            batch_texts = [captions[i] for i in owners] if uses_text else None
            omq, ta = self._run_batch([p[1] for p in pending], [p[2] for p in pending], batch_texts)
            np.add.at(omq_sum, owners, omq)
            if ta is not None:
                np.add.at(ta_sum, owners, ta)
            np.add.at(counts, owners, 1)
            pending.clear()

        was_training = self.training
        self.eval()
        try:
            for index, (wave, rate) in enumerate(zip(audio, rates, strict=True)):
                windows, lengths = self._windows(self._prepare_clip(wave, rate, index))
                for window, length in zip(windows, lengths, strict=True):
                    pending.append((index, window, length))
                    if len(pending) == batch_size:
                        flush()
            if pending:
                flush()
        finally:
            self.train(was_training)

        results = []
        for i in range(n_clips):
            entry = {"omq": float(omq_sum[i] / counts[i])}
            if uses_text:
                entry["ta"] = float(ta_sum[i] / counts[i])
            results.append(entry)
        return results

    # ----------------------------------------------------------------------- save and load

    def config_for_saving(self) -> MosModelConfig:
        """The config to write beside the weights; subclasses fill in encoder configs.

        Returns:
            A copy of ``self.config``.
        """
        return copy.deepcopy(self.config)

    def save_assets(self, directory: Path) -> None:
        """Writes extra files (e.g. a tokenizer) beside the weights; none by default."""

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json`` and ``model.safetensors`` (and any assets) to a folder.

        Tensors that share memory (tied weights) are stored once and recorded as aliases
        in the safetensors metadata.

        Args:
            directory: The folder; created if missing, existing files are replaced.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata = {"format_version": WEIGHTS_FORMAT_VERSION, "kind": self.config.kind}
        save_state_file(self, directory / WEIGHTS_NAME, metadata)
        self.config_for_saving().save(directory / CONFIG_NAME)
        self.save_assets(directory)

    def load_checked_state_dict(
        self, state: dict[str, torch.Tensor], source: str | os.PathLike = "<state dict>"
    ) -> None:
        """Loads weights strictly, naming the first missing, unexpected or misshapen key.

        Args:
            state: Parameter and buffer tensors by name.
            source: The file they came from, for messages.

        Raises:
            CheckpointError: On missing or unexpected keys or a shape mismatch.
        """
        load_state_strict(self, state, source)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, device: str | torch.device | None = None
    ) -> MosModel:
        """Loads a model saved with :meth:`save_pretrained`.

        The architecture is rebuilt from ``config.json`` alone and every weight is loaded
        from ``model.safetensors`` strictly; nothing is unpickled.

        Args:
            name_or_path: The saved model's folder (use ``load_mos_model`` for names).
            device: Where to put the model; ``None`` keeps it on the CPU.

        Returns:
            The model, in eval mode, of the class its config's kind names.

        Raises:
            CheckpointError: If the folder or a file is missing, or the weights do not
                match the architecture (the key is named).
            ConfigError: If the config is invalid or, when called on a subclass, of
                another kind.
        """
        directory = Path(name_or_path)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no saved MOS model folder there")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory}: missing {name}")
        config = MosModelConfig.load(directory / CONFIG_NAME)
        model_cls = get_model_class(config.kind)
        if not issubclass(model_cls, cls):
            raise ConfigError(
                f"{directory / CONFIG_NAME}: holds a {config.kind!r} model, not a {cls.__name__}"
            )
        model = model_cls(config, load_pretrained=False, asset_dir=directory)
        weights = directory / WEIGHTS_NAME
        state = read_state_file(weights)
        model.load_checked_state_dict(state, weights)
        if device is not None:
            model.to(device)
        model.eval()
        return model

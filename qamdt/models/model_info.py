"""Size, shapes and compute of a transformer config, built on the meta device."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qamdt.errors import ConfigError
from qamdt.models.transformer import (
    QualityMDTTransformer,
    check_model_config,
    count_parameters,
)

DEFAULT_TEXT_LENGTH = {1024: 128}
"""Text tokens assumed for FLOPs by text width (FLAN-T5: 128), else 64."""


def approx_forward_flops(
    model: QualityMDTTransformer, time: int, freq: int, text_len: int
) -> float:
    """Matmul FLOPs of one unmasked forward pass of one sample (2 per multiply-add).

    Counts the linear layers of every block (attention projections, MLP, skips) and the two
    attention matmuls; embeddings and norms are ignored (under 1%).
    """
    cfg = model.config
    tokens = model.num_tokens(time, freq)
    dim = cfg.hidden_size
    hidden = int(dim * cfg.mlp_ratio)
    blocks = cfg.encoder_depth + cfg.decoder_depth
    per_block = (
        2 * tokens * dim * 3 * dim  # qkv
        + 2 * 2 * tokens * tokens * dim  # scores and weighted sum
        + 2 * tokens * dim * dim  # out projection
        + 2 * tokens * dim * dim  # cross-attention query
        + 2 * text_len * dim * 2 * dim  # cross-attention keys and values
        + 2 * 2 * tokens * text_len * dim  # cross-attention matmuls
        + 2 * tokens * dim * dim  # cross-attention out projection
        + 2 * 2 * tokens * dim * hidden  # MLP
    )
    skips = sum(
        block.skip_linear is not None for block in (*model.encoder_blocks, *model.decoder_blocks)
    )
    patch_dim = model.patcher.patch_dim(cfg.in_channels)
    extra = 2 * skips * tokens * 2 * dim * dim + 2 * 2 * tokens * patch_dim * dim
    return float(blocks * per_block + extra + 2 * text_len * cfg.text_dim * dim * 2)


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

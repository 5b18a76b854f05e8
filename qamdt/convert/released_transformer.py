"""The authors' released transformer: its hyper-parameters and its weights in our names.

The released network is ``PixArt_MDT_MOS_AS_TOKEN`` of the authors' code, configured by
``model.params.unet_config.params`` of their ``qa_mdt.yaml``. Their names map to
:class:`~qamdt.models.transformer.QualityMDTTransformer` as follows (``i`` a block):

==============================  =============================================
theirs                          ours
==============================  =============================================
``x_embedder.proj`` (Conv2d)    ``patch_embed`` (Linear over ``(c, p_t, p_f)``)
``t_embedder.mlp.0 / .2``       ``time_embed.linear_1 / linear_2``
``t_block.1``                   ``time_block.1``
``y_embedder``                  ``text_proj`` (``text_projection: linear``)
``mos_embed`` (5 rows)          ``quality_embed.table`` rows 1-5 (row 0, the null
                                level the released model never had, is zero)
``en_inblocks.i``               ``encoder_blocks.i``
``en_outblocks.i``              ``encoder_blocks.{half + i}`` (with the long skip)
``sideblocks.i``                ``side_blocks.i``
``de_blocks.i``                 ``decoder_blocks.i`` (with the input skip)
block ``cross_attn.q_linear``   block ``cross_attn.query``
block ``cross_attn.kv_linear``  block ``cross_attn.key_value``
block ``mlp.fc1 / fc2``         block ``mlp.0 / mlp.2``
``final_layer.linear``          ``final_proj``, rows from ``(p_t, p_f, c)`` to
                                ``(c, p_t, p_f)`` order
``final_layer.scale_shift_table``  ``final_scale_shift_table``
``decoder_pos_embed``, ``mask_token``  the same
``pos_embed`` (a buffer)        not stored: recomputed, and checked against it
==============================  =============================================

The EMA copy of the same weights is stored by Lightning's ``LitEma`` as
``model_ema.diffusion_model<name without dots>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from qamdt.checkpoints import CheckpointError
from qamdt.config import read_yaml
from qamdt.errors import ConfigError

RAW_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema.diffusion_model"
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")

PUBLISHED_UNET = {
    "input_size": [256, 16],
    "patch_size": [4, 1],
    "overlap_size": [0, 0],
    "in_channels": 8,
    "hidden_size": 1152,
    "depth": 28,
    "num_heads": 16,
    "mlp_ratio": 4.0,
    "cond_dim": 1024,
    "mask_ratio": 0.30,
    "decode_layer": 8,
}
"""``unet_config.params`` of the published ``qa_mdt.yaml`` (what is used when none is given)."""

# Keys of their unet params that do not change the network (or are inert at these values).
_IGNORED_UNET_KEYS = {
    "class_dropout_prob",
    "pred_sigma",
    "drop_path",
    "window_size",
    "window_block_indexes",
    "use_rel_pos",
    "lewei_scale",
    "use_cfg",
    "overlap",
    "cfg_scale",
    "model_max_length",
    "config",
}

RELEASED_OPTIONS = {
    "position_encoding": "sincos",
    "sincos_layout": "freq_time_scaled",
    "text_projection": "linear",
    "cross_attention_norm": False,
    "decoder_input_skip": True,
    "decoder_position": "learned",
    "mask_keep_rounding": "floor",
    "long_skips": True,
    "side_depth": 1,
    "num_quality_levels": 5,
    "quality_modulation": False,
}
"""The options of :class:`QualityMDTTransformer` that make it the released network."""


def read_authors_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parts of the authors' ``qa_mdt.yaml`` a conversion needs.

    Args:
        path: Their training YAML (``audioldm_train/config/mos_as_token/qa_mdt.yaml``).

    Returns:
        ``{"unet": unet_config.params, "diffusion": {...}, "audio": {...}}``; the diffusion
        part has ``linear_start``, ``linear_end``, ``timesteps``, ``parameterization``,
        the audio part ``sampling_rate``, ``hop_length``, ``n_mels``, ``duration`` (what
        the file sets).

    Raises:
        ConfigError: If the file is missing or lacks ``model.params.unet_config.params``.
    """
    values = read_yaml(path)
    try:
        params = values["model"]["params"]
        unet = dict(params["unet_config"]["params"])
    except (KeyError, TypeError):
        raise ConfigError(
            f"{path}: not the authors' layout (no model.params.unet_config.params)"
        ) from None
    diffusion = {
        key: params[key]
        for key in ("linear_start", "linear_end", "timesteps", "parameterization")
        if key in params
    }
    pre = values.get("preprocessing") or {}
    audio = {
        "sampling_rate": (pre.get("audio") or {}).get("sampling_rate"),
        "duration": (pre.get("audio") or {}).get("duration"),
        "hop_length": (pre.get("stft") or {}).get("hop_length"),
        "n_mels": (pre.get("mel") or {}).get("n_mel_channels"),
    }
    return {"unet": unet, "diffusion": diffusion, "audio": {k: v for k, v in audio.items() if v}}


def model_config_from_unet(unet: Mapping[str, Any] | None = None, where: str = "unet") -> dict:
    """Our transformer config for the authors' ``unet_config.params``.

    Args:
        unet: Their parameters (None: the published ones).
        where: Their origin, for error messages.

    Raises:
        ConfigError: On a key this conversion does not know, or a value the released
            network does not support here (overlapping patches with padding).
    """
    values = {**PUBLISHED_UNET, **(unet or {})}
    unknown = sorted(set(values) - set(PUBLISHED_UNET) - _IGNORED_UNET_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}")
    depth, decode = int(values["depth"]), int(values["decode_layer"])
    if decode < 0 or depth - decode < 2:
        raise ConfigError(
            f"{where}: depth {depth} / decode_layer {decode}: need depth - decode >= 2"
        )
    size = [int(v) for v in values["input_size"]]
    patch = [int(v) for v in values["patch_size"]]
    overlap = [int(v) for v in values["overlap_size"]]
    for length, p, o in zip(size, patch, overlap, strict=True):
        if o and (length - p) % (p - o):
            raise ConfigError(
                f"{where}: input_size {size} is not tiled exactly by patch {patch} with overlap "
                f"{overlap}; the released code pads such grids on both sides, which is not "
                "supported"
            )
    low = float(values["mask_ratio"])
    return {
        "in_channels": int(values["in_channels"]),
        "sample_size": size,
        "patch_size": patch,
        "patch_overlap": overlap,
        "hidden_size": int(values["hidden_size"]),
        "num_heads": int(values["num_heads"]),
        "encoder_depth": 2 * ((depth - decode) // 2),
        "decoder_depth": decode,
        "mlp_ratio": float(values["mlp_ratio"]),
        "text_dim": int(values["cond_dim"]),
        # The released code draws r = mask_ratio + 0.2 U per batch.
        "mask_ratio_range": [low, min(low + 0.2, 0.99)],
        "prediction_type": "epsilon",
        **RELEASED_OPTIONS,
    }


def _block_names(model: torch.nn.Module) -> dict[str, str]:
    """Their block prefixes -> ours."""
    half = len(model.encoder_blocks) // 2
    names = {}
    for i in range(half):
        names[f"en_inblocks.{i}."] = f"encoder_blocks.{i}."
        names[f"en_outblocks.{i}."] = f"encoder_blocks.{half + i}."
    for i in range(len(model.side_blocks)):
        names[f"sideblocks.{i}."] = f"side_blocks.{i}."
    for i in range(len(model.decoder_blocks)):
        names[f"de_blocks.{i}."] = f"decoder_blocks.{i}."
    return names


_INSIDE_BLOCK = {
    "attn.qkv.": "attn.qkv.",
    "attn.proj.": "attn.proj.",
    "cross_attn.q_linear.": "cross_attn.query.",
    "cross_attn.kv_linear.": "cross_attn.key_value.",
    "cross_attn.proj.": "cross_attn.proj.",
    "mlp.fc1.": "mlp.0.",
    "mlp.fc2.": "mlp.2.",
    "skip_linear.": "skip_linear.",
    "scale_shift_table": "scale_shift_table",
}

_TOP_LEVEL = {
    "x_embedder.proj.weight": "patch_embed.weight",
    "x_embedder.proj.bias": "patch_embed.bias",
    "t_embedder.mlp.0.weight": "time_embed.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_embed.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_embed.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_embed.linear_2.bias",
    "t_block.1.weight": "time_block.1.weight",
    "t_block.1.bias": "time_block.1.bias",
    "y_embedder.weight": "text_proj.weight",
    "y_embedder.bias": "text_proj.bias",
    "mos_embed.weight": "quality_embed.table.weight",
    "final_layer.linear.weight": "final_proj.weight",
    "final_layer.linear.bias": "final_proj.bias",
    "final_layer.scale_shift_table": "final_scale_shift_table",
    "decoder_pos_embed": "decoder_pos_embed",
    "mask_token": "mask_token",
}


def their_parameter_names(model: torch.nn.Module) -> dict[str, str]:
    """Every parameter of ``model`` (a released-option transformer) under their name.

    Returns:
        Their name (without ``model.diffusion_model.``) -> our name.
    """
    ours = {name for name, _ in model.named_parameters()}
    names = {theirs: mine for theirs, mine in _TOP_LEVEL.items() if mine in ours}
    for their_block, our_block in _block_names(model).items():
        for their_part, our_part in _INSIDE_BLOCK.items():
            for suffix in ("weight", "bias") if their_part.endswith(".") else ("",):
                mine = our_block + our_part + suffix
                if mine in ours:
                    names[their_block + their_part + suffix] = mine
    missing = ours - set(names.values())
    if missing:
        raise ConfigError(f"no released name for parameter(s) {sorted(missing)}")
    return names


def their_parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Their names and shapes of ``model``'s parameters, in their layouts.

    What a released checkpoint of this configuration holds under
    ``model.diffusion_model.`` (without the ``pos_embed`` buffer); tests and benchmarks
    build checkpoints from it.
    """
    params = dict(model.named_parameters())
    shapes = {}
    for theirs, ours in their_parameter_names(model).items():
        shape = tuple(params[ours].shape)
        if theirs == "x_embedder.proj.weight":
            shape = (shape[0], model.config.in_channels, *model.config.patch_size)
        elif theirs == "mos_embed.weight":
            shape = (shape[0] - 1, shape[1])
        shapes[theirs] = shape
    return shapes


def _final_rows_to_ours(weight: torch.Tensor, patch: tuple[int, int], channels: int):
    """Final-layer rows from their ``(p_t, p_f, c)`` order to our ``(c, p_t, p_f)``."""
    shape = weight.shape[1:]
    return (
        weight.reshape(patch[0], patch[1], channels, *shape)
        .permute(2, 0, 1, *range(3, 3 + len(shape)))
        .reshape(-1, *shape)
    )


def convert_transformer_state(
    state: Mapping[str, torch.Tensor], model: torch.nn.Module, weights: str = "ema"
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Our state dict for ``model`` from the released checkpoint's ``state_dict``.

    Args:
        state: The checkpoint's full ``state_dict``.
        model: A transformer built with :func:`model_config_from_unet`'s config (it may
            live on the meta device; only names and shapes are read).
        weights: "ema" (``model_ema.*``, what the authors sample with) or "raw"
            (``model.diffusion_model.*``).

    Returns:
        ``(our state dict, checkpoint keys used or checked)``: the keys of both copies
        of the transformer (the unused copy is dropped deliberately) and the
        ``pos_embed`` buffer.

    Raises:
        CheckpointError: A tensor missing or of the wrong shape (named), or a
            ``pos_embed`` that is not this configuration's table.
    """
    if weights not in ("ema", "raw"):
        raise ConfigError(f"weights: unknown '{weights}'; known: ['ema', 'raw']")
    names = their_parameter_names(model)
    ours = dict(model.named_parameters())
    config = model.config
    used = {RAW_PREFIX + theirs for theirs in names} | {RAW_PREFIX + "pos_embed"}
    used |= {EMA_PREFIX + theirs.replace(".", "") for theirs in names}
    used |= {key for key in EMA_BOOKKEEPING if key in state}
    converted = {}
    for theirs, mine in names.items():
        key = RAW_PREFIX + theirs if weights == "raw" else EMA_PREFIX + theirs.replace(".", "")
        if key not in state:
            raise CheckpointError(f"{key}: missing from the checkpoint ({weights} weights)")
        tensor = state[key]
        expected = tuple(ours[mine].shape)
        if mine == "patch_embed.weight":
            tensor = tensor.reshape(tensor.shape[0], -1) if tensor.dim() == 4 else tensor
        elif mine in ("final_proj.weight", "final_proj.bias") and tensor.shape[0] == expected[0]:
            tensor = _final_rows_to_ours(tensor, config.patch_size, config.in_channels)
        elif mine == "quality_embed.table.weight" and tuple(tensor.shape[1:]) == expected[1:]:
            if tensor.shape[0] != expected[0] - 1:
                raise CheckpointError(
                    f"{key}: {tensor.shape[0]} quality rows, expected {expected[0] - 1}"
                )
            # Row 0 is our null level; the released model has none (never dropped).
            tensor = torch.cat([tensor.new_zeros(1, tensor.shape[1]), tensor])
        if tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"{key}: shape {tuple(state[key].shape)} does not fit {mine} {expected}"
            )
        converted[mine] = tensor
    _check_position_table(state, model)
    return converted, used


def _check_position_table(state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    key = RAW_PREFIX + "pos_embed"
    if key not in state:
        return
    stored = state[key].float().reshape(-1, state[key].shape[-1])
    grid = model.grid(*model.config.sample_size)
    table, _ = model._positions(grid, "cpu", torch.float32)
    if tuple(stored.shape) != tuple(table.shape):
        raise CheckpointError(f"{key}: shape {tuple(stored.shape)}, expected {tuple(table.shape)}")
    error = float((stored - table).abs().max())
    if error > 1e-4:
        raise CheckpointError(
            f"{key}: differs from the released sin-cos table by up to {error:.3g}; the "
            "checkpoint's configuration does not match (give its --config)"
        )

"""Key names and shapes of the VAE and HiFi-GAN in the authors' released checkpoint.

The tables list every tensor a converter of :mod:`qamdt.convert.released_components`
consumes, in the authors' layout (the LDM ``AutoencoderKL`` and HiFi-GAN V1's generator),
so that a checkpoint is checked key by key before any conversion and an error names the
checkpoint's own key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import SpeechT5HifiGanConfig

from qamdt.checkpoints import CheckpointError

Shapes = dict[str, tuple[int, ...]]
# Weight forms of a HiFi-GAN convolution: plain, old weight-norm hooks, parametrizations.
HIFIGAN_WEIGHT_FORMS = (
    (".weight",),
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def check_state(state: Mapping[str, Any], expected: Shapes, prefix: str) -> None:
    """Raises naming the first missing, unknown or misshapen key (with ``prefix``)."""
    missing = [k for k in expected if k not in state]
    unknown = sorted(k for k in state if k not in expected)
    if missing:
        raise CheckpointError(
            f"checkpoint key '{prefix}{missing[0]}' is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if unknown:
        raise CheckpointError(
            f"unknown checkpoint key '{prefix}{unknown[0]}'"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + "; the released layout has no such tensor"
        )
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint key '{prefix}{key}' holds a {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"checkpoint key '{prefix}{key}' has shape {tuple(value.shape)}, expected {shape}"
            )


def tensor_shape(state: Mapping[str, Any], key: str, prefix: str) -> tuple[int, ...]:
    """The shape of ``state[key]``; a :class:`CheckpointError` naming it when it is absent."""
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"checkpoint key '{prefix}{key}' is missing")
    return tuple(value.shape)


def count_indexed(state: Mapping[str, Any], pattern: str) -> int:
    """How many consecutive ``i`` from 0 have a key starting with ``pattern.format(i)``."""
    count = 0
    while any(key.startswith(pattern.format(count)) for key in state):
        count += 1
    return count


def _ldm_resnet(name: str, c_in: int, c_out: int) -> Shapes:
    shapes = {
        f"{name}.norm1.weight": (c_in,),
        f"{name}.norm1.bias": (c_in,),
        f"{name}.conv1.weight": (c_out, c_in, 3, 3),
        f"{name}.conv1.bias": (c_out,),
        f"{name}.norm2.weight": (c_out,),
        f"{name}.norm2.bias": (c_out,),
        f"{name}.conv2.weight": (c_out, c_out, 3, 3),
        f"{name}.conv2.bias": (c_out,),
    }
    if c_in != c_out:
        shapes[f"{name}.nin_shortcut.weight"] = (c_out, c_in, 1, 1)
        shapes[f"{name}.nin_shortcut.bias"] = (c_out,)
    return shapes


def _conv(name: str, c_out: int, c_in: int, kernel: int) -> Shapes:
    return {f"{name}.weight": (c_out, c_in, kernel, kernel), f"{name}.bias": (c_out,)}


def _ldm_mid(name: str, width: int) -> Shapes:
    shapes = {**_ldm_resnet(f"{name}.block_1", width, width)}
    shapes[f"{name}.attn_1.norm.weight"] = (width,)
    shapes[f"{name}.attn_1.norm.bias"] = (width,)
    for part in ("q", "k", "v", "proj_out"):
        shapes.update(_conv(f"{name}.attn_1.{part}", width, width, 1))
    shapes.update(_ldm_resnet(f"{name}.block_2", width, width))
    return shapes


def released_vae_key_shapes(config: Mapping[str, Any]) -> Shapes:
    """Every tensor of an LDM-layout VAE (the keys :func:`convert_released_vae` consumes).

    Args:
        config: ``AutoencoderKL`` arguments, as :func:`released_vae_config` gives.

    Returns:
        Shape by key, keys without the ``first_stage_model.`` prefix.
    """
    widths = list(config["block_out_channels"])
    blocks = int(config["layers_per_block"])
    latent = int(config["latent_channels"])
    top = widths[-1]
    shapes = _conv("encoder.conv_in", widths[0], int(config["in_channels"]), 3)
    c_in = widths[0]
    for level, width in enumerate(widths):
        for block in range(blocks):
            shapes.update(_ldm_resnet(f"encoder.down.{level}.block.{block}", c_in, width))
            c_in = width
        if level < len(widths) - 1:
            shapes.update(_conv(f"encoder.down.{level}.downsample.conv", width, width, 3))
    shapes.update(_ldm_mid("encoder.mid", top))
    shapes["encoder.norm_out.weight"] = shapes["encoder.norm_out.bias"] = (top,)
    shapes.update(_conv("encoder.conv_out", 2 * latent, top, 3))
    shapes.update(_conv("quant_conv", 2 * latent, 2 * latent, 1))
    shapes.update(_conv("post_quant_conv", latent, latent, 1))
    shapes.update(_conv("decoder.conv_in", top, latent, 3))
    shapes.update(_ldm_mid("decoder.mid", top))
    c_in = top
    for level in reversed(range(len(widths))):
        for block in range(blocks + 1):
            shapes.update(_ldm_resnet(f"decoder.up.{level}.block.{block}", c_in, widths[level]))
            c_in = widths[level]
        if level > 0:
            shapes.update(_conv(f"decoder.up.{level}.upsample.conv", c_in, c_in, 3))
    shapes["decoder.norm_out.weight"] = shapes["decoder.norm_out.bias"] = (widths[0],)
    shapes.update(_conv("decoder.conv_out", int(config["out_channels"]), widths[0], 3))
    return shapes


def hifigan_weight_shape(state: Mapping[str, Any], name: str, prefix: str) -> tuple[int, ...]:
    """The weight shape of convolution ``name``, plain or weight-norm (its direction's)."""
    for form in HIFIGAN_WEIGHT_FORMS:
        if name + form[-1] in state:
            return tensor_shape(state, name + form[-1], prefix)
    raise CheckpointError(f"checkpoint key '{prefix}{name}.weight' is missing")


def released_vocoder_key_shapes(config: SpeechT5HifiGanConfig) -> Shapes:
    """Weight and bias shapes of the original generator's convolutions, by original key.

    The weights are listed as ``NAME.weight``; :func:`convert_released_vocoder` also
    accepts each as the weight-norm pair ``NAME.weight_g`` / ``NAME.weight_v`` (or
    ``NAME.parametrizations.weight.original0`` / ``original1``).
    """
    channels = config.upsample_initial_channel
    shapes = {"conv_pre.weight": (channels, config.model_in_dim, 7), "conv_pre.bias": (channels,)}
    block = 0
    for i, kernel in enumerate(config.upsample_kernel_sizes):
        shapes[f"ups.{i}.weight"] = (channels, channels // 2, kernel)
        channels //= 2
        shapes[f"ups.{i}.bias"] = (channels,)
        for size, dilation in zip(
            config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
        ):
            for group in ("convs1", "convs2"):
                for m in range(len(dilation)):
                    shapes[f"resblocks.{block}.{group}.{m}.weight"] = (channels, channels, size)
                    shapes[f"resblocks.{block}.{group}.{m}.bias"] = (channels,)
            block += 1
    shapes["conv_post.weight"] = (1, channels, 7)
    shapes["conv_post.bias"] = (1,)
    return shapes


def hifigan_plain_view(state: Mapping[str, Any], expected: Shapes, prefix: str) -> dict[str, Any]:
    """``state`` with each weight-norm pair checked and listed under its ``.weight`` key.

    Only names and shapes matter here; the folding is
    :func:`~qamdt.models.vocoder.convert_hifigan_state_dict`'s.
    """
    plain: dict[str, Any] = {}
    for key, value in state.items():
        pair = next(
            (f for f in HIFIGAN_WEIGHT_FORMS[1:] if key.endswith(f[0]) or key.endswith(f[1])), None
        )
        if pair is None:
            plain[key] = value
            continue
        base = key.removesuffix(pair[0]).removesuffix(pair[1])
        g_key, v_key = base + pair[0], base + pair[1]
        for part in (g_key, v_key):
            if part not in state:
                raise CheckpointError(f"checkpoint key '{prefix}{part}' is missing")
        if key != v_key:
            continue
        weight = base + ".weight"
        if weight in state:
            raise CheckpointError(
                f"unknown checkpoint key '{prefix}{weight}' beside its weight-norm pair"
            )
        shape = tuple(value.shape)
        magnitude = (shape[0],) + (1,) * (len(shape) - 1)
        if tuple(state[g_key].shape) != magnitude:
            raise CheckpointError(
                f"checkpoint key '{prefix}{g_key}' has shape {tuple(state[g_key].shape)}, "
                f"expected {magnitude}"
            )
        if weight in expected and shape != expected[weight]:
            raise CheckpointError(
                f"checkpoint key '{prefix}{v_key}' has shape {shape}, expected {expected[weight]}"
            )
        plain[weight] = value
    return plain

"""The VAE, HiFi-GAN and FLAN-T5 of the authors' released checkpoint, as pipeline components.

The authors' Lightning checkpoint (``checkpoint_389999.ckpt``) holds, under ``state_dict``:

* ``first_stage_model.*``: their mel VAE in the LDM ``AutoencoderKL`` layout (``encoder.*``,
  ``decoder.*``, ``quant_conv``, ``post_quant_conv``), converted with diffusers'
  ``convert_ldm_vae_checkpoint`` into a :class:`~qamdt.models.vae.LatentVAE`;
* ``first_stage_model.vocoder.*``: the AudioLDM 16 kHz / 64-mel HiFi-GAN generator (plain or
  weight-norm weights), converted into a ``SpeechT5HifiGan``
  :class:`~qamdt.models.vocoder.Vocoder`;
* ``cond_stage_models.0.model.*``: the FLAN-T5-large encoder (``T5EncoderModel`` keys),
  loaded into a :class:`~qamdt.models.text_encoder.TextEncoder` with a tokenizer from a
  local folder;
* ``scale_factor``: the latent scale (``1 / std`` of their training latents), stored as the
  VAE's ``scaling_factor``;
* ``first_stage_model.loss.*`` (LPIPS network and discriminator) and ``clap.*`` (the CLAP
  model that re-ranks candidates), dropped on purpose (:data:`DROPPED_PREFIXES`).

:func:`split_released_state` sorts a checkpoint's keys into these groups. Every converter is
strict: a missing, unknown or misshapen tensor is a :class:`CheckpointError` naming the
checkpoint key. Widths are read from the tensors, so any size of the same layout converts;
what the tensors cannot tell (HiFi-GAN strides and dilations, GroupNorm's 32 groups) takes
the released values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from transformers import (
    AutoTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
)

from qamdt.audio_spec import AudioSpec, get_audio_spec
from qamdt.checkpoints import CheckpointError, load_state_strict
from qamdt.convert.released_layouts import (
    check_state,
    count_indexed,
    hifigan_plain_view,
    hifigan_weight_shape,
    released_vae_key_shapes,
    released_vocoder_key_shapes,
    tensor_shape,
)
from qamdt.errors import ConfigError
from qamdt.models.hifigan_weights import convert_hifigan_state_dict
from qamdt.models.text_encoder import TextEncoder
from qamdt.models.vae import LatentVAE, autoencoder_kwargs
from qamdt.models.vocoder import Vocoder

VAE_PREFIX = "first_stage_model."
VOCODER_PREFIX = "first_stage_model.vocoder."
TEXT_ENCODER_PREFIX = "cond_stage_models.0.model."
SCALE_FACTOR_KEY = "scale_factor"
DROPPED_PREFIXES: dict[str, str] = {
    "first_stage_model.loss.": "the VAE's training loss (LPIPS network and discriminator)",
    "clap.": "the CLAP model the authors use to re-rank candidates, not part of generation",
}
# FlanT5HiddenState tokenises with max_length=128, padding=True (longest), truncation=True.
RELEASED_TEXT_MAX_LENGTH = 128
# LDM's Normalize() hard-codes 32 groups; the tensors cannot tell.
LDM_NORM_GROUPS = 32
# AudioLDM's hifigan_16k_64bins generator (the authors' get_vocoder for 64 mel bins).
AUDIOLDM_HIFIGAN_16K_64: dict[str, Any] = {
    "model_in_dim": 64,
    "sampling_rate": 16000,
    "upsample_initial_channel": 1024,
    "upsample_rates": [5, 4, 2, 2, 2],
    "upsample_kernel_sizes": [16, 16, 8, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
}


@dataclasses.dataclass(frozen=True)
class ReleasedComponentStates:
    """A released checkpoint's ``state_dict`` sorted by component (tensors are not copied).

    Attributes:
        vae: ``first_stage_model.*`` without the vocoder and loss, prefix removed.
        vocoder: ``first_stage_model.vocoder.*``, prefix removed.
        text_encoder: ``cond_stage_models.0.model.*``, prefix removed (empty when absent).
        scale_factor: The latent scale, or ``None`` when the checkpoint has none.
        consumed: Full keys of the tensors above (``scale_factor`` included).
        dropped: Full keys under :data:`DROPPED_PREFIXES`.
        rest: Every other key (the transformer's, EMA, schedule buffers), for the caller.
    """

    vae: dict[str, torch.Tensor]
    vocoder: dict[str, torch.Tensor]
    text_encoder: dict[str, torch.Tensor]
    scale_factor: float | None
    consumed: tuple[str, ...]
    dropped: tuple[str, ...]
    rest: tuple[str, ...]


def split_released_state(state_dict: Mapping[str, Any]) -> ReleasedComponentStates:
    """Sorts a released checkpoint's ``state_dict`` into VAE, vocoder, text encoder and rest.

    Args:
        state_dict: The checkpoint's ``state_dict`` (tensors may be memory-mapped).

    Returns:
        The component sub-dicts, ready for :func:`convert_released_vae`,
        :func:`convert_released_vocoder` and :func:`load_released_text_encoder`.

    Raises:
        CheckpointError: If ``scale_factor`` is not a one-element tensor or number.
    """
    vae, vocoder, text, consumed, dropped, rest = {}, {}, {}, [], [], []
    scale_factor = None
    for key, value in state_dict.items():
        if any(key.startswith(prefix) for prefix in DROPPED_PREFIXES):
            dropped.append(key)
            continue
        if key.startswith(VOCODER_PREFIX):
            vocoder[key.removeprefix(VOCODER_PREFIX)] = value
        elif key.startswith(VAE_PREFIX):
            vae[key.removeprefix(VAE_PREFIX)] = value
        elif key.startswith(TEXT_ENCODER_PREFIX):
            text[key.removeprefix(TEXT_ENCODER_PREFIX)] = value
        elif key == SCALE_FACTOR_KEY:
            scale_factor = _scalar(value, key)
        else:
            rest.append(key)
            continue
        consumed.append(key)
    return ReleasedComponentStates(
        vae, vocoder, text, scale_factor, tuple(consumed), tuple(dropped), tuple(rest)
    )


def _scalar(value: Any, key: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CheckpointError(f"'{key}' has shape {tuple(value.shape)}, expected a scalar")
        return float(value.reshape(()).item())
    if isinstance(value, int | float):
        return float(value)
    raise CheckpointError(f"'{key}' holds a {type(value).__name__}, expected a scalar tensor")


# --- VAE -----------------------------------------------------------------------------------


def released_vae_config(
    state: Mapping[str, Any], scale_factor: float = 1.0, prefix: str = VAE_PREFIX
) -> dict[str, Any]:
    """``AutoencoderKL`` arguments for an LDM-layout VAE, widths read from its tensors.

    Args:
        state: The VAE's tensors in the LDM layout (``encoder.*``, ``decoder.*``, ...).
        scale_factor: The latent scale to store as ``scaling_factor``.
        prefix: Prepended to key names in errors.

    Raises:
        CheckpointError: If a tensor the widths are read from is missing.
        ConfigError: If the layout is one diffusers' ``AutoencoderKL`` cannot express.
    """
    levels = count_indexed(state, "encoder.down.{}.block.0.conv1.weight")
    if levels == 0:
        raise CheckpointError(
            f"checkpoint key '{prefix}encoder.down.0.block.0.conv1.weight' is missing"
        )
    widths = [
        tensor_shape(state, f"encoder.down.{i}.block.0.conv1.weight", prefix)[0]
        for i in range(levels)
    ]
    z_channels = tensor_shape(state, "encoder.conv_out.weight", prefix)[0] // 2
    embed_dim = tensor_shape(state, "quant_conv.weight", prefix)[0] // 2
    if z_channels != embed_dim:
        raise ConfigError(
            f"{prefix}: z_channels {z_channels} differs from embed_dim {embed_dim}; diffusers' "
            "AutoencoderKL has one latent_channels for both"
        )
    uneven = [w for w in widths if w % LDM_NORM_GROUPS]
    if uneven:
        raise ConfigError(f"{prefix}: block widths {widths} must divide by {LDM_NORM_GROUPS}")
    config = {
        "in_channels": tensor_shape(state, "encoder.conv_in.weight", prefix)[1],
        "out_channels": tensor_shape(state, "decoder.conv_out.weight", prefix)[0],
        "latent_channels": z_channels,
        "block_out_channels": widths,
        "layers_per_block": count_indexed(state, "encoder.down.0.block.{}.conv1.weight"),
        "norm_num_groups": LDM_NORM_GROUPS,
        "scaling_factor": float(scale_factor),
    }
    return autoencoder_kwargs(config, where=f"{prefix} (released VAE)")


def convert_released_vae(
    state: Mapping[str, torch.Tensor], scale_factor: float | torch.Tensor, prefix: str = VAE_PREFIX
) -> LatentVAE:
    """Converts the released LDM-layout VAE into a :class:`LatentVAE`.

    Args:
        state: ``first_stage_model.*`` with the prefix removed and without the vocoder and
            loss tensors (:func:`split_released_state` gives exactly this).
        scale_factor: The checkpoint's ``scale_factor`` (latents are multiplied by it after
            encoding and divided by it before decoding, as the authors' sampler does).
        prefix: Prepended to key names in errors.

    Returns:
        The VAE, float32, ``scaling_factor`` set.

    Raises:
        CheckpointError: Naming a missing, unknown or misshapen key.
        ConfigError: If the layout is not one ``AutoencoderKL`` can express, or the scale is
            not a finite positive number.
    """
    if isinstance(scale_factor, torch.Tensor):
        scale_factor = _scalar(scale_factor, SCALE_FACTOR_KEY)
    config = released_vae_config(state, 1.0, prefix)
    check_state(state, released_vae_key_shapes(config), prefix)
    vae = LatentVAE(AutoencoderKL(**config))
    vae.set_scaling_factor(scale_factor)
    converted = convert_ldm_vae_checkpoint(dict(state), config)
    load_state_strict(vae.autoencoder, converted, f"{prefix}* (converted to diffusers)")
    return vae.eval()


# --- Vocoder -------------------------------------------------------------------------------


def released_vocoder_config(
    state: Mapping[str, Any],
    upsample_rates: Sequence[int] | None = None,
    resblock_dilation_sizes: Sequence[Sequence[int]] | None = None,
    sampling_rate: int = 16000,
    prefix: str = VOCODER_PREFIX,
) -> SpeechT5HifiGanConfig:
    """A ``SpeechT5HifiGan`` config for a HiFi-GAN generator, widths and kernels read from it.

    Args:
        state: The generator's tensors (``conv_pre``, ``ups.N``, ``resblocks.N``,
            ``conv_post``), plain or weight-norm.
        upsample_rates: Strides of the up-sampling layers; default AudioLDM's
            ``[5, 4, 2, 2, 2]`` (hop 160). Strides do not show in the weights.
        resblock_dilation_sizes: Dilations per residual-block kernel; default AudioLDM's.
        sampling_rate: Output sample rate in Hz.
        prefix: Prepended to key names in errors.

    Raises:
        CheckpointError: If a tensor the sizes are read from is missing.
        ConfigError: If the rates or dilations do not fit the number of layers.
    """
    rates = list(upsample_rates or AUDIOLDM_HIFIGAN_16K_64["upsample_rates"])
    dilations = [
        list(d)
        for d in resblock_dilation_sizes or AUDIOLDM_HIFIGAN_16K_64["resblock_dilation_sizes"]
    ]
    pre = hifigan_weight_shape(state, "conv_pre", prefix)
    n_ups = count_indexed(state, "ups.{}.")
    n_blocks = count_indexed(state, "resblocks.{}.")
    if n_ups == 0 or n_blocks == 0 or n_blocks % n_ups:
        raise CheckpointError(
            f"{prefix}*: {n_ups} up-sampling layers and {n_blocks} residual blocks do not make "
            "a HiFi-GAN generator (need a whole number of blocks per layer)"
        )
    n_kernels = n_blocks // n_ups
    if len(rates) != n_ups:
        raise ConfigError(f"{prefix}*: {n_ups} up-sampling layers but upsample_rates {rates}")
    depth = count_indexed(state, "resblocks.0.convs1.{}.")
    if len(dilations) != n_kernels or any(len(d) != depth for d in dilations):
        raise ConfigError(
            f"{prefix}*: residual blocks have {n_kernels} kernels of {depth} convolutions but "
            f"resblock_dilation_sizes is {dilations}"
        )
    return SpeechT5HifiGanConfig(
        model_in_dim=pre[1],
        sampling_rate=sampling_rate,
        upsample_initial_channel=pre[0],
        upsample_rates=rates,
        upsample_kernel_sizes=[
            hifigan_weight_shape(state, f"ups.{i}", prefix)[-1] for i in range(n_ups)
        ],
        resblock_kernel_sizes=[
            hifigan_weight_shape(state, f"resblocks.{j}.convs1.0", prefix)[-1]
            for j in range(n_kernels)
        ],
        resblock_dilation_sizes=dilations,
        normalize_before=False,
    )


def convert_released_vocoder(
    state: Mapping[str, torch.Tensor],
    spec: AudioSpec | str = "paper",
    upsample_rates: Sequence[int] | None = None,
    resblock_dilation_sizes: Sequence[Sequence[int]] | None = None,
    prefix: str = VOCODER_PREFIX,
) -> Vocoder:
    """Converts the released HiFi-GAN generator into a ``SpeechT5HifiGan`` :class:`Vocoder`.

    Weight-norm pairs are folded (``g * v / ||v||``) and ``ups.N`` is renamed
    ``upsampler.N`` by :func:`~qamdt.models.vocoder.convert_hifigan_state_dict`. The
    authors' generator and ``SpeechT5HifiGan`` compute the same function (leaky ReLU 0.1
    inside, 0.01 before ``conv_post``, ``tanh`` out); the vocoder takes ``[B, T, n_mels]``
    where theirs takes ``[B, n_mels, T]``.

    Args:
        state: ``first_stage_model.vocoder.*`` with the prefix removed.
        spec: The audio settings of the mels (the ``paper`` preset: 16 kHz, 64 mels, hop 160).
        upsample_rates: Up-sampling strides; default AudioLDM's ``[5, 4, 2, 2, 2]``.
        resblock_dilation_sizes: Residual-block dilations; default AudioLDM's.
        prefix: Prepended to key names in errors.

    Raises:
        CheckpointError: Naming a missing, unknown or misshapen key.
        ConfigError: If the generator's mel bands, hop or rate do not fit ``spec``.
    """
    spec = get_audio_spec(spec)
    config = released_vocoder_config(
        state, upsample_rates, resblock_dilation_sizes, spec.sample_rate, prefix
    )
    expected = released_vocoder_key_shapes(config)
    check_state(hifigan_plain_view(state, expected, prefix), expected, prefix)
    model = SpeechT5HifiGan(config)
    load_state_strict(model, convert_hifigan_state_dict(state), f"{prefix}* (converted)")
    return Vocoder(spec, model.eval())


# --- Text encoder --------------------------------------------------------------------------


def _t5_config_from_state(state: Mapping[str, Any], prefix: str) -> T5Config:
    """A T5 encoder config read from the tensors; the rest are T5's (and FLAN-T5's) defaults."""
    vocab, d_model = tensor_shape(state, "shared.weight", prefix)
    attention = "encoder.block.0.layer.0.SelfAttention."
    buckets, heads = tensor_shape(state, attention + "relative_attention_bias.weight", prefix)
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    ff_key = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight")
    return T5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=tensor_shape(state, attention + "q.weight", prefix)[0] // heads,
        d_ff=tensor_shape(state, ff_key, prefix)[0],
        num_layers=count_indexed(state, "encoder.block.{}."),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu" if gated else "relu",
    )


def _text_folders(folder: Path) -> tuple[Path, Path]:
    """Config and tokenizer folders: ``folder`` or its ``text_encoder/`` and ``tokenizer/``."""
    model_dir = folder / "text_encoder" if (folder / "text_encoder").is_dir() else folder
    tokenizer_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else model_dir
    return model_dir, tokenizer_dir


def load_released_text_encoder(
    state: Mapping[str, torch.Tensor] | None,
    folder: str | os.PathLike | None,
    max_length: int = RELEASED_TEXT_MAX_LENGTH,
    prefix: str = TEXT_ENCODER_PREFIX,
) -> TextEncoder:
    """The released FLAN-T5 encoder as a :class:`TextEncoder`.

    The authors' ``FlanT5HiddenState`` tokenises with ``max_length=128``,
    ``padding=True`` (to the longest text of the batch), ``truncation=True``, and returns the
    last hidden state with the tokenizer's attention mask (1 at real tokens, the final
    ``</s>`` included). :meth:`TextEncoder.encode` does the same with ``max_length`` 128:
    ``padding="longest"``, truncation, the mask as bool.

    Args:
        state: ``cond_stage_models.0.model.*`` with the prefix removed (``T5EncoderModel``
            keys), or ``None`` / empty when the checkpoint has no T5 weights. Its tensors
            become the model's parameters (no copy when they are float32).
        folder: A local FLAN-T5 folder (the ``--text-encoder`` option): the tokenizer always
            comes from it, and the model config when it has a ``config.json``; without one
            the config is read from the tensors' shapes with T5's defaults (FLAN-T5's:
            gated GELU, 32 / 128 relative-position buckets / distance). When ``state`` is
            empty, the weights come from the folder too.
        max_length: Longest token sequence (128 as released).
        prefix: Prepended to key names in errors.

    Raises:
        ConfigError: If there is no folder (so no tokenizer), the folder has no tokenizer,
            its encoder is not a T5, or the tokenizer's vocabulary exceeds the model's.
        CheckpointError: Naming a missing, unknown or misshapen key.
    """
    if folder is None:
        where = "holds FLAN-T5 weights but" if state else "holds no FLAN-T5 weights and"
        raise ConfigError(
            f"the released checkpoint {where} no tokenizer: pass a local FLAN-T5-large "
            "folder (--text-encoder DIR; its tokenizer files are enough when the checkpoint "
            "holds the weights)"
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"text encoder folder {folder} does not exist")
    if not state:
        encoder = TextEncoder.from_pretrained(folder, max_length=max_length)
        if encoder.kind != "t5":
            raise ConfigError(
                f"{folder}: the released model needs a T5 encoder, got {encoder.kind}"
            )
        return encoder
    model_dir, tokenizer_dir = _text_folders(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{tokenizer_dir}: no tokenizer here ({exc})") from exc
    if (model_dir / "config.json").is_file():
        config = T5Config.from_pretrained(model_dir, local_files_only=True)
        if config.model_type != "t5":
            raise ConfigError(
                f"{model_dir}: the released model needs a T5 config, got {config.model_type}"
            )
    else:
        config = _t5_config_from_state(state, prefix)
    state = dict(state)
    shared, embed = state.get("shared.weight"), state.get("encoder.embed_tokens.weight")
    if embed is None and shared is not None:
        state["encoder.embed_tokens.weight"] = shared
    elif shared is None and embed is not None:
        state["shared.weight"] = embed
    elif shared is not None and not torch.equal(shared, embed):
        raise CheckpointError(
            f"checkpoint keys '{prefix}shared.weight' and '{prefix}encoder.embed_tokens.weight' "
            "differ; T5 ties them"
        )
    with torch.device("meta"):
        model = T5EncoderModel(config)
    check_state(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, prefix)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"{tokenizer_dir}: the tokenizer has {len(tokenizer)} tokens but the encoder's "
            f"vocabulary has {config.vocab_size}"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    model.tie_weights()
    return TextEncoder(model, tokenizer, max_length, kind="t5")

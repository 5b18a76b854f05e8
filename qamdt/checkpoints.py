"""Safe, strict weight files: safetensors with tied tensors stored once, checked loading.

Every model of the project saves through :func:`save_state_file` and loads through
:func:`read_state_file` and :func:`load_state_strict`, so a missing, unexpected or
misshapen weight is an error naming the key and the file, never a silent partial load.
Released PyTorch checkpoints are read with :func:`load_torch_checkpoint`
(``weights_only=True``: nothing but tensors and plain containers is unpickled).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from qamdt.errors import CheckpointError


def _short_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"[{shown}]{more}"


def load_state_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike
) -> None:
    """Loads every parameter and buffer of ``module`` from ``state``, nothing more or less.

    Args:
        module: The module to fill.
        state: Tensors by state-dict key.
        source: The file they came from, named in errors.

    Raises:
        CheckpointError: Naming the missing or unexpected keys, or the first key whose shape
            differs from the module's.
    """
    source = os.fspath(source)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected key(s) {_short_list(unexpected)}")
        raise CheckpointError(f"{source}: {'; '.join(parts)}")
    converted = {}
    for name, target in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: key '{name}' holds a {type(value).__name__}")
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{source}: key '{name}' has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target.shape)}"
            )
        converted[name] = value.to(dtype=target.dtype)
    module.load_state_dict(converted, strict=True)


def save_state_file(
    module: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Writes a module's state dict as safetensors, tied tensors stored once.

    A key whose tensor is the same view of the same storage as an earlier key's is recorded
    as an alias of it in the file's metadata (safetensors refuses shared tensors).

    Args:
        module: The module.
        path: The ``.safetensors`` file to write.
        metadata: Extra string metadata to store in the file.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        key = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        if tensor.numel() and storage in storages:
            tensor = tensor.clone()  # another view of a storage already written
        storages.add(storage)
        seen[key] = name
        tensors[name] = tensor.contiguous().cpu()
    stored = {**(metadata or {}), "format": "pt", "aliases": json.dumps(aliases, sort_keys=True)}
    data = safetensors.torch.save(tensors, metadata=stored)
    Path(path).write_bytes(_sorted_header(data))


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes the metadata in the order of a hash map that changes from one call
    to the next, so the same weights would give different bytes on every save; tensor
    offsets are explicit, so the order of the header's keys does not matter to readers.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def read_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a file written by :func:`save_state_file`, aliases filled in.

    Raises:
        CheckpointError: If the file is missing or unreadable, or an alias is dangling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({exc})") from exc
    for alias, target in json.loads(metadata.get("aliases", "{}")).items():
        if target not in state:
            raise CheckpointError(f"{path}: alias '{alias}' points at missing '{target}'")
        state[alias] = state[target]
    return state


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU, errors naming the file.

    Raises:
        CheckpointError: If the file is missing or holds anything but tensors and plain
            containers (nothing else is unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) ({exc})"
        ) from exc


def load_pretrained(loader, path: str | os.PathLike) -> Any:
    """``loader(path)`` (a ``from_pretrained``), an unreadable weight file a clear error.

    A truncated or damaged safetensors file makes the libraries raise a bare ``OSError``
    (or worse) deep inside; this names the folder and what went wrong.

    Raises:
        CheckpointError: If the folder's files cannot be loaded.
    """
    try:
        return loader(path)
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot be loaded ({reason}); the weight file is truncated, damaged or "
            "not a model of this kind"
        ) from exc

"""Device names and seeded sampling for the captioners that run large pretrained models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from qamdt.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    Raises:
        ConfigError: On an unknown device name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: unknown device {name!r}") from exc


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Runs a block with torch's global generators seeded, restoring their state after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield

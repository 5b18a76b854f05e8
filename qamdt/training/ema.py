"""Exponential moving averages of weights, swapped in for evaluation and saving."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


@contextlib.contextmanager
def averaged_weights(ema, parameters: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Puts the EMA's weights into ``parameters`` inside the block, the live ones after.

    Args:
        ema: A diffusers ``EMAModel`` tracking ``parameters``, or ``None`` (nothing changes).
        parameters: The parameters the EMA tracks.
    """
    if ema is None:
        yield
        return
    parameters = list(parameters)
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)

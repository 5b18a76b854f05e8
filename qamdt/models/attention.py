"""Self- and cross-attention through PyTorch SDPA, or xformers on CUDA when asked for."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from qamdt.errors import ConfigError
from qamdt.models.positions import apply_rope

ATTENTION_BACKENDS = ("auto", "sdpa", "xformers")


@functools.lru_cache(maxsize=1)
def xformers_available() -> bool:
    """Whether ``xformers.ops`` imports."""
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def check_backend(name: str) -> str:
    """Validates an attention backend name."""
    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"attention_backend: unknown '{name}'; known: {list(ATTENTION_BACKENDS)}")
    if name == "xformers" and not xformers_available():
        raise ConfigError("attention_backend 'xformers': the xformers package is not installed")
    return name


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled dot-product attention over ``[B, heads, S, head_dim]`` tensors.

    Args:
        query: ``[B, H, S_q, D]``.
        key: ``[B, H, S_k, D]``.
        value: ``[B, H, S_k, D]``.
        key_mask: ``[B, S_k]``, True where a key may be attended to (text padding).
        backend: "sdpa", "xformers", or "auto" (xformers on CUDA when installed).

    Returns:
        ``[B, H, S_q, D]``.
    """
    # Masked (text) attention is short and stays on SDPA; xformers takes the long,
    # unmasked self-attention, where its memory savings are.
    use_xformers = (
        query.is_cuda
        and key_mask is None
        and (backend == "xformers" or (backend == "auto" and xformers_available()))
    )
    if use_xformers:
        import xformers.ops

        out = xformers.ops.memory_efficient_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        )
        return out.transpose(1, 2)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
        # PyTorch's CPU attention kernels are slower in 16 bits than in float32 (the
        # backward pass seven times, docs/speed.md), unlike its matrix products; autocast
        # would cast float32 inputs back down, so it is off here.
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                query.float(), key.float(), value.float(), attn_mask=mask
            )
        return out.to(query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional rotary positions.

    Args:
        dim: Token width.
        num_heads: Attention heads (``dim`` divisible by it).
        backend: Attention backend, see :func:`attend`.
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "auto"):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Attends ``x`` ``[B, S, dim]`` to itself; ``rope`` rotates queries and keys."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        if rope is not None:
            query, key = apply_rope(query, *rope), apply_rope(key, *rope)
        out = attend(query, key, value, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class CrossAttention(nn.Module):
    """Multi-head attention from tokens to text states; output projection starts at zero.

    Args:
        dim: Token width (the text states are projected to it beforehand).
        num_heads: Attention heads.
        backend: Attention backend, see :func:`attend`.
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "auto"):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        # Zero output: a freshly built block passes its input through unchanged.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def key_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, heads, L, head_dim]`` of ``context`` ``[B, L, dim]``."""
        batch, length, dim = context.shape
        key, value = (
            self.key_value(context)
            .reshape(batch, length, 2, self.num_heads, dim // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        return key, value

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        key_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, S, dim]`` attends to ``context`` ``[B, L, dim]`` (mask ``[B, L]``).

        ``key_values``, when given, are :meth:`key_values` of ``context`` computed
        beforehand (once per sampling call); ``context`` is then not read.
        """
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads
        query = self.query(x).reshape(batch, length, self.num_heads, head_dim).transpose(1, 2)
        key, value = key_values if key_values is not None else self.key_values(context)
        out = attend(query, key, value, key_mask=context_mask, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))

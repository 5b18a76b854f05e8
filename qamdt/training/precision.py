"""Mixed precision of the trainers: when a run autocasts to bfloat16.

Both trainers keep float32 weights, optimiser states and losses; ``bf16`` computes the
model's forward (and so its backward) under ``torch.autocast`` in bfloat16. ``auto`` does
so only where the hardware computes bfloat16 natively: emulated, it is slower than
float32. Autocast is applied by the trainers themselves rather than through Accelerate,
whose process-wide state refuses a second ``Accelerator`` of another precision (as when
one process trains the MOS model in float32 and then the VAE in bfloat16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qamdt.errors import ConfigError

if TYPE_CHECKING:
    import torch

# What a trainer's ``mixed_precision`` may be; the command line offers the same names.
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
# Those of the trainers without float16's loss scaling (the VAE's, the CLAP scorer's).
BFLOAT16_PRECISIONS = tuple(name for name in MIXED_PRECISIONS if name != "fp16")


def check_mixed_precision(value, known: tuple[str, ...] = MIXED_PRECISIONS) -> str:
    """Returns ``value`` if it is one of ``known`` (by default :data:`MIXED_PRECISIONS`).

    Raises:
        ConfigError: Naming ``mixed_precision`` and the known values.
    """
    if value not in known:
        raise ConfigError(f"mixed_precision: unknown '{value}'; known: {list(known)}")
    return value


def accelerate_precision(mixed_precision: str) -> str:
    """What the trainer's ``Accelerator`` gets: float16's loss scaling, or nothing."""
    return "fp16" if mixed_precision == "fp16" else "no"


def precision_used(bfloat16: bool, otherwise: str = "no") -> str:
    """The precision a run records: "bf16" when it autocast to bfloat16, else ``otherwise``.

    Args:
        bfloat16: What :func:`use_bfloat16` decided for the run.
        otherwise: The name to record without bfloat16 (an ``Accelerator``'s
            ``mixed_precision`` where Accelerate handles float16).
    """
    return "bf16" if bfloat16 else otherwise


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively.

    A GPU that supports it, or a CPU with AVX-512 BF16 or AMX instructions.
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def use_bfloat16(mixed_precision: str, device: torch.device) -> bool:
    """Whether training autocasts to bfloat16 on ``device``.

    Args:
        mixed_precision: A config's ``mixed_precision``: "bf16", "auto" (bfloat16 where
            :func:`native_bfloat16`), or anything else for no bfloat16.
        device: The training device.
    """
    if mixed_precision == "auto":
        return native_bfloat16(device)
    return mixed_precision == "bf16"

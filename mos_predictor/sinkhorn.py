"""Entropic optimal transport between two sequences, with log-domain Sinkhorn iterations.

The text-aware MOS model uses the transport cost between its projected audio and text
sequences as a regulariser (WhisQ's Sinkhorn term): minimising it pulls every audio step
towards some text token and vice versa in the shared embedding space.

For a cost matrix ``C`` (``n x m``), marginals ``a`` and ``b`` (uniform over the valid
positions) and a blur ``epsilon``, the plan is ``P = exp((f_i + g_j - C_ij) / epsilon)``
where the potentials ``f`` and ``g`` alternate

    f = epsilon * (log a - logsumexp_j((g_j - C_ij) / epsilon))
    g = epsilon * (log b - logsumexp_i((f_i - C_ij) / epsilon))

which is Sinkhorn's matrix scaling written in the log domain, stable for small epsilon.
The returned cost is ``sum_ij P_ij C_ij``; every step is differentiable, so gradients flow
through the unrolled iterations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Log-marginal of a masked position: finite (no inf - inf = NaN), and after dividing by
# epsilon far below anything exp() does not flush to zero.
_MASKED_LOG_WEIGHT = -1e4


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine distance ``1 - cos(x_i, y_j)``, in [0, 2].

    Args:
        x: ``(B, N, D)``.
        y: ``(B, M, D)``.

    Returns:
        ``(B, N, M)``.
    """
    return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)


def _log_marginal(mask: torch.Tensor | None, batch: int, size: int, like: torch.Tensor):
    if mask is None:
        return torch.full((batch, size), -math.log(size), device=like.device, dtype=like.dtype)
    mask = mask.to(device=like.device, dtype=torch.bool)
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(like.dtype)
    return torch.where(mask, -torch.log(count), torch.full_like(count, _MASKED_LOG_WEIGHT))


def sinkhorn(
    cost: torch.Tensor,
    a_mask: torch.Tensor | None = None,
    b_mask: torch.Tensor | None = None,
    epsilon: float = 0.1,
    n_iters: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropic OT plan and transport cost for a batch of cost matrices.

    The marginals are uniform over the valid positions; masked positions get no mass.

    Args:
        cost: ``(B, N, M)`` cost matrices (any non-negative cost; cosine gives [0, 2]).
        a_mask: ``(B, N)`` True at valid rows, or ``None`` for all valid.
        b_mask: ``(B, M)`` True at valid columns, or ``None`` for all valid.
        epsilon: Entropic regularisation, in cost units; smaller is closer to exact OT
            and needs more iterations.
        n_iters: Sinkhorn iterations (each updates both potentials).

    Returns:
        ``(transport_cost, plan)``: ``(B,)`` values of ``sum P * C`` and the ``(B, N, M)``
        plan, whose column sums equal ``b`` exactly and row sums approach ``a``.

    Raises:
        ValueError: If ``cost`` is not 3-D, ``epsilon`` is not positive or ``n_iters`` < 1.
    """
    if cost.ndim != 3:
        raise ValueError(f"cost must be (B, N, M), got shape {tuple(cost.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    # Half precision loses the small differences the potentials are made of.
    cost = cost.float()
    batch, n, m = cost.shape
    log_a = _log_marginal(a_mask, batch, n, cost)
    log_b = _log_marginal(b_mask, batch, m, cost)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(n_iters):
        f = epsilon * (log_a - torch.logsumexp((g.unsqueeze(1) - cost) / epsilon, dim=2))
        g = epsilon * (log_b - torch.logsumexp((f.unsqueeze(2) - cost) / epsilon, dim=1))
    plan = torch.exp((f.unsqueeze(2) + g.unsqueeze(1) - cost) / epsilon)
    return (plan * cost).sum(dim=(1, 2)), plan


def sinkhorn_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    epsilon: float = 0.1,
    n_iters: int = 50,
) -> torch.Tensor:
    """Entropic OT cost between two sequences under the cosine cost.

    Args:
        x: ``(B, N, D)`` first sequence (e.g. projected audio).
        y: ``(B, M, D)`` second sequence (e.g. projected text).
        x_mask: ``(B, N)`` True at valid steps of ``x``, or ``None``.
        y_mask: ``(B, M)`` True at valid steps of ``y``, or ``None``.
        epsilon: Entropic regularisation (cosine-distance units).
        n_iters: Sinkhorn iterations.

    Returns:
        ``(B,)`` transport costs, each in [0, 2].
    """
    return sinkhorn(cosine_cost(x, y), x_mask, y_mask, epsilon, n_iters)[0]

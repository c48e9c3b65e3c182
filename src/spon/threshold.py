"""Pure maths of activation sparsity: masks, thresholds from samples, token selection."""

from __future__ import annotations

import math

import torch

__all__ = ["sparsify", "order_statistic", "threshold_from_samples", "sparsified_positions", "apply_to_positions"]


def sparsify(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """S(x) = x * (|x| > tau): entries at or below the threshold become exactly zero."""
    return x * (x.abs() > tau).to(x.dtype)


def order_statistic(n: int, sparsity: float) -> int | None:
    """Which order statistic (1-based) of n samples is the threshold for `sparsity`; None: drop nothing."""
    if sparsity <= 0.0 or n == 0:
        return None
    return max(1, min(n, math.ceil(sparsity * n)))


def threshold_from_samples(samples: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The value tau such that a fraction `sparsity` of `samples` (absolute values) is <= tau.

    Uses the exact order statistic (kthvalue), with no size limit, so calibration is reproducible.
    """
    samples = samples.flatten().float()
    k = order_statistic(samples.numel(), sparsity)
    if k is None:
        return torch.tensor(-1.0)  # nothing is <= -1: no entry is dropped
    return samples.kthvalue(k).values


def sparsified_positions(seq_len: int, tokens: str, last_fraction: float) -> slice:
    """Which sequence positions of a [.., T, D] input are sparsified.

    "all": every position. "decode": only single-token forwards (generation steps after prefill).
    "last": positions from round(T * (1 - last_fraction)) on; a single-token forward is always a decode step.
    """
    if tokens == "all" or seq_len == 1:
        return slice(0, seq_len)
    if tokens == "decode":
        return slice(0, 0)
    return slice(int(round(seq_len * (1.0 - last_fraction))), seq_len)


def apply_to_positions(x: torch.Tensor, positions: slice, mask_fn) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x * mask_fn(x) at the selected positions of x: [..., T, D], the other tokens left dense.

    Returns (sparsified x, the mask over the selected positions, or None when no position is selected).
    """
    if x.dim() < 2:
        mask = mask_fn(x)
        return x * mask.to(x.dtype), mask
    T = x.shape[-2]
    start, stop, _ = positions.indices(T)
    if start >= stop:
        return x, None
    if start == 0 and stop == T:
        mask = mask_fn(x)
        return x * mask.to(x.dtype), mask
    sel = x[..., start:stop, :]
    mask = mask_fn(sel)
    return torch.cat([x[..., :start, :], sel * mask.to(x.dtype), x[..., stop:, :]], dim=-2), mask

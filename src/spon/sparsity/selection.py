"""Pure maths of activation sparsity: which input entries a sparse layer keeps, and on which tokens.

One definition of each concept: `keep_mask` (what S keeps), `sparsify` (S itself), `dropped` (x - S(x)),
`order_statistic` (how many of n entries a sparsity drops). The selection rules of the peers:

- magnitude (TEAL, the default): score = |x|
- wina (WINA): score = |x_i| * ||W[:, i]||_2, the input times the norm of the weight column it feeds
- cats (CATS, MLP only): the MLP's activation output act(gate(x)) is thresholded on |act|, so the up and
  down projections skip the same channels (see `SparseActivation`)
- rsparse (R-Sparse): magnitude selection, and the dropped part goes through a low-rank approximation
  of W instead of being lost: y = W S(x) + U V (x - S(x)) + b

Selection: a calibrated threshold on the score (default), or exact per-token top-k of the score.
"""

from __future__ import annotations

import math

import torch

from spon.config import RULES, SELECTIONS

__all__ = [
    "RULES", "SELECTIONS", "score", "keep_mask", "keep_count", "sparsify", "dropped", "order_statistic",
    "threshold_from_samples", "sparsified_positions", "apply_to_positions", "column_norms", "low_rank",
]



def order_statistic(n: int, sparsity: float) -> int | None:
    """How many of n entries a sparsity drops, ceil(sparsity * n) in [1, n]; None: drop nothing.

    The threshold for `sparsity` is this order statistic (1-based) of n samples; top-k drops this many per token.
    """
    if sparsity <= 0.0 or n == 0:
        return None
    return max(1, min(n, math.ceil(sparsity * n)))


def keep_count(dim: int, sparsity: float) -> int:
    """Entries kept per token by top-k at this sparsity: dim minus `order_statistic(dim, sparsity)`."""
    return dim - (order_statistic(dim, sparsity) or 0)


def score(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """|x| (magnitude) or |x| * scale (WINA: scale = the weight's column norms); x: [..., D]."""
    s = x.abs()
    return s * scale.to(s.dtype) if scale is not None else s


def keep_mask(scores: torch.Tensor, tau: torch.Tensor | float | None = None, keep: int | None = None) -> torch.Tensor:
    """Boolean mask of kept entries: scores > tau (threshold), or each row's `keep` largest scores (top-k)."""
    if keep is None:
        return scores > tau
    if keep >= scores.shape[-1]:
        return torch.ones_like(scores, dtype=torch.bool)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(-1, scores.topk(keep, dim=-1).indices, True)
    return mask


def sparsify(x: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """S(x) = x * (|x| > tau): entries at or below the threshold become exactly zero."""
    return x * keep_mask(x.abs(), tau).to(x.dtype)


def dropped(x: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """x - S(x): the entries sparsity removes (what a spontaneous vector stands in for)."""
    return x * (~keep_mask(x.abs(), tau)).to(x.dtype)


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
    The slice's start and stop are always given, within [0, seq_len], so callers read them directly: `slice.indices`
    is a builtin that torch.compile cannot trace in some torch releases (2.11: a graph break, an error under fullgraph).
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
    start, stop = positions.start, positions.stop  # `sparsified_positions(T, ...)`: both given, within [0, T]
    if start >= stop:
        return x, None
    if start == 0 and stop == T:
        mask = mask_fn(x)
        return x * mask.to(x.dtype), mask
    sel = x[..., start:stop, :]
    mask = mask_fn(sel)
    return torch.cat([x[..., :start, :], sel * mask.to(x.dtype), x[..., stop:, :]], dim=-2), mask


def column_norms(matrix: torch.Tensor) -> torch.Tensor:
    """||W[:, i]||_2 for a weight W [out, in], in float32: WINA's per-input scale."""
    return matrix.float().norm(dim=0)


def low_rank(matrix: torch.Tensor, budget: float) -> tuple[torch.Tensor, torch.Tensor]:
    """U [out, r], V [r, in] with U V the best rank-r approximation of W (SVD), r = budget * out * in / (out + in).

    budget: the low-rank factors' size as a fraction of W's (R-Sparse's rank budget); at least rank 1.
    """
    out_f, in_f = matrix.shape
    r = max(1, min(min(out_f, in_f), math.floor(budget * out_f * in_f / (out_f + in_f))))
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    return (u[:, :r] * s[:r]).contiguous(), vh[:r].contiguous()

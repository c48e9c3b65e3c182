"""Selection rules of the peers, as pure maths: which input entries a sparse layer keeps.

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

__all__ = ["RULES", "SELECTIONS", "score", "keep_mask", "keep_count", "column_norms", "low_rank"]

RULES = ("magnitude", "wina", "cats", "rsparse")
SELECTIONS = ("threshold", "topk")


def score(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """|x| (magnitude) or |x| * scale (WINA: scale = the weight's column norms); x: [..., D]."""
    s = x.abs()
    return s * scale.to(s.dtype) if scale is not None else s


def keep_count(dim: int, sparsity: float) -> int:
    """Entries kept per token by top-k at this sparsity: D - round(sparsity * D), at least 0."""
    return max(0, dim - int(round(sparsity * dim)))


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

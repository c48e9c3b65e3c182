"""The plain-torch sparse GEMV: the definition every kernel is tested against, and the fallback."""

from __future__ import annotations

import torch

from spon.sparsity.selection import keep_mask

__all__ = ["reference_gemv", "threshold_for"]


def threshold_for(tau: float, dtype: torch.dtype) -> float:
    """tau as the comparison |x| > tau sees it for an x of `dtype`: torch compares a 16-bit x with tau rounded to x's
    dtype, so every kernel does the same."""
    return float(tau) if dtype == torch.float32 else float(torch.tensor(float(tau)).to(dtype))


def reference_gemv(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: float) -> torch.Tensor:
    """W S(x) + b with S(x) = x * (|x| > tau): gather the kept rows of wt [in, out] and multiply, in float32."""
    keep = keep_mask(x.abs(), tau).nonzero().flatten()
    y = x.float()[keep] @ wt[keep].float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)

"""Sparse-input GEMV kernels for batch-1 decode: y = W S(x) + b reading only the kept inputs' weight rows.

`sparse_gemv` picks the CPU kernel (C, OpenMP) or the Triton kernel (CUDA) and falls back to the
plain-torch reference, which defines the result every kernel must match.
"""

from __future__ import annotations

import torch

from .cpu import cpu_kernel
from .reference import reference_gemv

__all__ = ["sparse_gemv", "reference_gemv", "cpu_kernel", "backend_for"]


def backend_for(x: torch.Tensor, wt: torch.Tensor) -> str:
    """Which implementation `sparse_gemv` uses for these tensors: "cpu", "triton" or "torch"."""
    if x.is_cuda:
        from .triton_gemv import triton_available

        return "triton" if triton_available() and wt.dtype in (torch.float16, torch.bfloat16, torch.float32) else "torch"
    k = cpu_kernel()
    return "cpu" if k is not None and k.supports(wt.dtype) else "torch"


def sparse_gemv(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: float) -> torch.Tensor:
    """W S(x) + b for one token. x: [in]; wt: [in, out] (input-major, contiguous); bias: [out] or None.

    Returns [out] in x's dtype; accumulation is float32.
    """
    backend = backend_for(x, wt)
    if x.dtype != torch.float32:  # torch compares a 16-bit x with tau rounded to x's dtype; so do the kernels
        tau = float(torch.tensor(float(tau)).to(x.dtype))
    if backend == "cpu":
        b = bias.float() if bias is not None and bias.dtype != torch.float32 else bias
        y, _ = cpu_kernel().gemv(x.float().contiguous(), wt, b, float(tau))
        return y.to(x.dtype)
    if backend == "triton":
        from .triton_gemv import triton_gemv

        return triton_gemv(x, wt, bias, float(tau))
    return reference_gemv(x, wt, bias, tau)

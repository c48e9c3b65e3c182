"""Sparse-input GEMV kernels for batch-1 decode: y = W S(x) + b reading only the kept inputs' weight rows.

`sparse_gemv` picks the CPU kernel (C, OpenMP) or the Triton kernel (CUDA) and falls back to the
plain-torch reference, which defines the result every kernel must match. `GemvPlan` is one layer's
decode step prepared once (bias in float32, threshold rounded, working buffers allocated), so a decode
step costs one kernel call.
"""

from __future__ import annotations

import torch

from spon.serving.kernels.cpu import cpu_kernel
from spon.serving.kernels.reference import reference_gemv, threshold_for

__all__ = ["sparse_gemv", "reference_gemv", "cpu_kernel", "backend_for", "GemvPlan"]


def backend_for(x: torch.Tensor, wt: torch.Tensor) -> str:
    """Which implementation `sparse_gemv` uses for these tensors: "cpu", "triton" or "torch"."""
    if x.is_cuda:
        from spon.serving.kernels.triton_gemv import triton_available

        return "triton" if triton_available() and wt.dtype in (torch.float16, torch.bfloat16, torch.float32) else "torch"
    k = cpu_kernel()
    return "cpu" if k is not None and k.supports(wt.dtype) else "torch"


class GemvPlan:
    """W S(x) + b for single tokens of one dtype through one layer, with everything per-layer done once.

    wt: [in, out] input-major (CPU: rows of contiguous columns, `cpu.rows_readable`; CUDA: contiguous); bias: [out] or None;
    tau: the threshold; dtype: the inputs' dtype.
    """

    def __init__(self, wt: torch.Tensor, bias: torch.Tensor | None, tau: float, dtype: torch.dtype):
        self.wt, self.dtype = wt, dtype
        self.backend = backend_for(torch.empty(0, device=wt.device), wt)
        self.tau = threshold_for(tau, dtype)
        if self.backend == "cpu":
            kernel = cpu_kernel()
            self.direct = dtype in kernel.IO  # x read and y written by the kernel itself
            self.call = kernel.prepare(wt, bias, self.tau, dtype if self.direct else torch.float32)
        else:
            self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [in] of the plan's dtype -> [out] of the same dtype; accumulation is float32."""
        if self.backend == "cpu":
            if self.direct:
                return self.call(x.contiguous())
            return self.call(x.float().contiguous()).to(x.dtype)
        if self.backend == "triton":
            from spon.serving.kernels.triton_gemv import triton_gemv

            return triton_gemv(x, self.wt, self.bias, self.tau)
        return reference_gemv(x, self.wt, self.bias, self.tau)


def sparse_gemv(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: float) -> torch.Tensor:
    """W S(x) + b for one token. x: [in]; wt: [in, out] (input-major, contiguous); bias: [out] or None.

    Returns [out] in x's dtype; accumulation is float32. For repeated calls on one layer, keep a `GemvPlan`.
    """
    return GemvPlan(wt, bias, tau, x.dtype)(x)

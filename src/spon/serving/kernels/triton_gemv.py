"""The GPU sparse-input GEMV (Triton), batch-1 decode: y = W S(x) + b with W input-major (wt: [in, out]).

Each program owns BLOCK_N outputs and a K_CHUNK slice of the inputs; rows of dropped inputs are masked
off the loads, so their weights are never read. Partial sums meet in a float32 output by atomic add
(so the summation order, and the last bits, can vary run to run on a GPU). Runs on the CPU under
TRITON_INTERPRET=1, which is how the tests check it against the plain-torch reference.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from spon.serving.kernels.reference import threshold_for

__all__ = ["triton_available", "triton_gemv"]


@lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def sparse_gemv_kernel(x_ptr, wt_ptr, y_ptr, n_in, n_out, tau, K_CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_out
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K_CHUNK, BLOCK_K):
            offs_k = pid_k * K_CHUNK + k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < n_in
            xk = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            keep = k_ok & (tl.abs(xk) > tau)
            w = tl.load(wt_ptr + offs_k[:, None] * n_out + offs_n[None, :], mask=keep[:, None] & n_ok[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * xk[:, None], axis=0)
        tl.atomic_add(y_ptr + offs_n, acc, mask=n_ok)

    return sparse_gemv_kernel


def triton_gemv(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: float,
                block_n: int = 256, block_k: int = 64, k_chunk: int = 256, num_warps: int = 4) -> torch.Tensor:
    """x: [in]; wt: [in, out] contiguous (fp16, bf16 or fp32); bias: [out] or None. Returns [out] in x's dtype.

    The block sizes are the fastest of those `scripts/gpu_checks.py --sweep` tries on bf16 4096x14336 and its
    transpose; even so this kernel has been slower than cuBLAS's dense GEMV at every sparsity measured
    (docs/RESULTS.md, `docs/results/gpu-h200/`).
    """
    import triton

    n_in, n_out = wt.shape
    tau = threshold_for(tau, x.dtype)
    y = bias.float().clone() if bias is not None else torch.zeros(n_out, dtype=torch.float32, device=x.device)
    k_chunk = max(block_k, min(k_chunk, triton.next_power_of_2(n_in)))
    grid = (triton.cdiv(n_out, block_n), triton.cdiv(n_in, k_chunk))
    _kernel()[grid](x.contiguous(), wt, y, n_in, n_out, float(tau), K_CHUNK=k_chunk, BLOCK_K=block_k, BLOCK_N=block_n,
                     num_warps=num_warps)
    return y.to(x.dtype)

"""The CPU sparse GEMV over block-quantized weights (quant_gemv.c): built once per machine like the float kernel, loaded
with ctypes; `quant_kernel()` is None (with one warning) where it cannot be built, and callers fall back to
`reference_qgemv`, which defines the result."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from spon.serving.kernels.cpu import FLAGS, compile_library, cpu_id
from spon.serving.kernels.reference import threshold_for
from spon.serving.quantized import KINDS, QuantWeight

__all__ = ["quant_kernel", "quant_kernel_path", "QuantGemv", "reference_qgemv", "SOURCE"]

SOURCE = Path(__file__).with_name("quant_gemv.c")
HEADER = Path(__file__).with_name("spon_qplan.h")


class _QPlan(ctypes.Structure):  # mirrors spon_qplan in quant_gemv.c
    _fields_ = [("q", ctypes.c_void_p), ("hb", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("minv", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("acc", ctypes.c_void_p), ("idx", ctypes.c_void_p), ("val", ctypes.c_void_p),
                ("bstart", ctypes.c_void_p), ("n_in", ctypes.c_int64), ("n_out", ctypes.c_int64),
                ("block", ctypes.c_int64), ("tau", ctypes.c_float), ("offset", ctypes.c_float), ("nthreads", ctypes.c_int), ("kind", ctypes.c_int),
                ("scale_f16", ctypes.c_int)]


def quant_kernel_path() -> Path:
    """The kernel's shared library, built on first use (RuntimeError where it cannot be)."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    key = SOURCE.read_bytes() + HEADER.read_bytes() + " ".join([cc, *FLAGS]).encode() + cpu_id().encode()
    return compile_library("spon_qgemv", key, [cc, *FLAGS, str(SOURCE), "-lm"])


@lru_cache(maxsize=1)
def quant_kernel() -> ctypes.CDLL | None:
    if os.environ.get("SPON_NO_KERNEL"):
        return None
    try:
        lib = ctypes.CDLL(str(quant_kernel_path()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"spon: quantized CPU kernel unavailable ({e}); quantized decoding falls back to plain torch", stacklevel=2)
        return None
    lib.spon_qgemv.argtypes, lib.spon_qgemv.restype = [ctypes.c_void_p] * 3, ctypes.c_int64
    return lib


def reference_qgemv(x: torch.Tensor, weight: QuantWeight, bias: torch.Tensor | None, tau: float) -> torch.Tensor:
    """W S(x) + b with W dequantized (float32): what the kernel computes, up to the order of its additions."""
    xf = x.float().reshape(-1)
    y = (xf * (xf.abs() > tau)) @ weight.dequantize_t()
    return y + bias.float() if bias is not None else y


class QuantGemv:
    """One layer's quantized sparse GEMV, prepared once: y = W S(x) + b for a float32 x [in] (other dtypes are
    converted), through the C kernel or, without one, `reference_qgemv`.

    tau: the threshold (-1: keep every input, a dense GEMV over the quantized bytes)."""

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None, tau: float, threads: int | None = None):
        if weight.in_features % weight.block:
            raise ValueError(f"{weight.in_features} inputs are not whole blocks of {weight.block}")
        self.weight, self.tau = weight, threshold_for(tau, torch.float32)
        self.bias = bias.detach().float().contiguous() if bias is not None else None
        self.lib = quant_kernel()
        if self.lib is None:
            return
        threads = threads or torch.get_num_threads()
        n_in, n_out = weight.in_features, weight.out_features
        self.acc = torch.empty(threads * 2 * n_out, dtype=torch.float32)
        self.idx = torch.empty(n_in, dtype=torch.int64)
        self.val = torch.empty(n_in, dtype=torch.float32)
        self.bstart = torch.empty(n_in // weight.block + 1, dtype=torch.int64)
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        self.args = _QPlan(ptr(weight.q), ptr(weight.hb), ptr(weight.scale), ptr(weight.minimum), ptr(self.bias),
                           ptr(self.acc), ptr(self.idx), ptr(self.val), ptr(self.bstart), n_in, n_out, weight.block,
                           self.tau, weight.offset, threads, KINDS[weight.kind], int(weight.scale.dtype == torch.float16))
        self.ptr = ctypes.addressof(self.args)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """x [in] -> (y [out] float32, kept inputs)."""
        xf = x.detach().reshape(-1).float().contiguous()
        if self.lib is None:
            return reference_qgemv(xf, self.weight, self.bias, self.tau), int((xf.abs() > self.tau).sum())
        y = torch.empty(self.weight.out_features, dtype=torch.float32)
        kept = self.lib.spon_qgemv(self.ptr, xf.data_ptr(), y.data_ptr())
        return y, int(kept)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0].to(x.dtype)

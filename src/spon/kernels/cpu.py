"""The CPU sparse-input GEMV: a small C file compiled once per machine (gcc/cc, -O3 -march=native, OpenMP),
loaded with ctypes. Where no compiler is found or the build fails, `cpu_kernel()` returns None, warns once,
and callers use plain torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["cpu_kernel", "CpuKernel", "kernel_cache_dir"]

SOURCE = Path(__file__).with_name("sparse_gemv.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]


def kernel_cache_dir() -> Path:
    return Path(os.environ.get("SPON_CACHE", Path.home() / ".cache" / "spon")) / "kernels"


def _cpu_id() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + flags


def _build(cc: str) -> Path:
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *FLAGS]).encode() + _cpu_id().encode()).hexdigest()[:16]
    lib = kernel_cache_dir() / f"spon_gemv-{key}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=lib.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["unknown error"])[-1])
        os.replace(tmp, lib)  # atomic: concurrent builders never load a half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


class CpuKernel:
    """ctypes binding: gemv(x, wt, bias, tau) -> (y [out] float32, kept count)."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        args = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_float] + [ctypes.c_void_p] * 2 + [ctypes.c_int]
        self.fns = {}
        for dtype, name in ((torch.float32, "spon_gemv_f32"), (torch.bfloat16, "spon_gemv_bf16")):
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int64
            self.fns[dtype] = fn
        self.lib.spon_read_sum.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        self.lib.spon_read_sum.restype = ctypes.c_double

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self.fns

    def gemv(self, x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: float,
             idx: torch.Tensor | None = None, val: torch.Tensor | None = None, threads: int | None = None) -> tuple[torch.Tensor, int]:
        """x: [in] float32 contiguous; wt: [in, out] float32 or bfloat16, contiguous; bias: [out] float32 or None."""
        n_in, n_out = wt.shape
        y = torch.empty(n_out, dtype=torch.float32)
        idx = idx if idx is not None else torch.empty(n_in, dtype=torch.int64)
        val = val if val is not None else torch.empty(n_in, dtype=torch.float32)
        kept = self.fns[wt.dtype](
            x.data_ptr(), wt.data_ptr(), bias.data_ptr() if bias is not None else None, y.data_ptr(),
            n_in, n_out, tau, idx.data_ptr(), val.data_ptr(), threads or torch.get_num_threads(),
        )
        return y, int(kept)


    def read_sum(self, buf: torch.Tensor, threads: int | None = None) -> float:
        """Sum of a float32 buffer: times how fast this machine reads memory with these threads."""
        return float(self.lib.spon_read_sum(buf.data_ptr(), buf.numel(), threads or torch.get_num_threads()))


@lru_cache(maxsize=1)
def cpu_kernel() -> CpuKernel | None:
    """The compiled kernel, built on first use; None (with one warning) where it cannot be built."""
    if os.environ.get("SPON_NO_KERNEL"):
        return None
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    try:
        if not cc:
            raise RuntimeError("no C compiler (gcc or cc) on PATH")
        return CpuKernel(_build(cc))
    except Exception as e:  # any build or load failure means: plain torch, and say so once
        warnings.warn(f"spon: sparse CPU kernel unavailable ({e}); decoding falls back to plain torch (no speed-up)", stacklevel=2)
        return None

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

__all__ = ["cpu_kernel", "CpuKernel", "PreparedGemv", "Scratch", "kernel_cache_dir", "cpu_operator_library"]

SOURCE = Path(__file__).with_name("sparse_gemv.c")
OP_SOURCE = Path(__file__).with_name("op_cpu.cpp")  # the operators' CPU implementations in C++
HEADER = Path(__file__).with_name("spon_plan.h")  # the prepared call both include
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]


def kernel_cache_dir() -> Path:
    return Path(os.environ.get("SPON_CACHE", Path.home() / ".cache" / "spon")) / "kernels"


def cpu_id() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + flags


def compile_library(stem: str, key_material: bytes, command: list[str]) -> Path:
    """Run `command` + ["-o", tmp] once per key into the cache; the library's path. Atomic: concurrent builders
    never load a half-written library."""
    lib = kernel_cache_dir() / f"{stem}-{hashlib.sha256(key_material).hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=lib.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        proc = subprocess.run([*command, "-o", tmp], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.strip().splitlines() if "error" in line] or proc.stderr.strip().splitlines()
            raise RuntimeError((errors or ["unknown error"])[-1])
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _build(cc: str) -> Path:
    key = SOURCE.read_bytes() + HEADER.read_bytes() + " ".join([cc, *FLAGS]).encode() + cpu_id().encode()
    return compile_library("spon_gemv", key, [cc, *FLAGS, str(SOURCE), "-lm"])


def cpu_operator_library(kernel: "CpuKernel") -> Path:
    """op_cpu.cpp built against this torch and linked to `kernel`'s library (about 15 s, once per machine and torch):
    the operators' CPU implementations without Python in the call. Raises RuntimeError where it cannot be built."""
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++ or c++) on PATH")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [cxx, "-O2", "-std=c++20", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
               *[f"-I{p}" for p in cpp_extension.include_paths()], str(OP_SOURCE), str(kernel.path),
               f"-Wl,-rpath,{kernel.path.parent}", *[f"-L{p}" for p in cpp_extension.library_paths()], "-ltorch_cpu", "-lc10"]
    key = OP_SOURCE.read_bytes() + HEADER.read_bytes() + " ".join(command).encode() + torch.__version__.encode()
    return compile_library("spon_op", key, command)


class CpuKernel:
    """ctypes binding. Every call goes through `prepare` (arguments packed once per layer); `gemv` is the
    one-off form: gemv(x, wt, bias, tau) -> (y [out] in x's dtype, kept count)."""

    IO = (torch.float32, torch.bfloat16)  # x and y dtypes the kernel reads and writes directly
    WEIGHTS = (torch.float32, torch.bfloat16)  # weight dtypes it reads

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        p = ctypes.c_void_p
        self.lib.spon_gemv_plan.argtypes, self.lib.spon_gemv_plan.restype = [p, p, p], ctypes.c_int64
        self.lib.spon_dense_plan.argtypes, self.lib.spon_dense_plan.restype = [p, p, p], None
        self.lib.spon_read_sum.argtypes = [p, ctypes.c_int64, ctypes.c_int]
        self.lib.spon_read_sum.restype = ctypes.c_double

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self.WEIGHTS

    def prepare(self, wt: torch.Tensor, bias: torch.Tensor | None, tau: float, dtype: torch.dtype,
                threads: int | None = None) -> "PreparedGemv":
        """One layer's call with its buffers and arguments packed once; dtype: x's and y's (float32 or bfloat16)."""
        return PreparedGemv(self, wt, bias, tau, dtype, threads or torch.get_num_threads())

    def prepare_dense(self, w: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                      threads: int | None = None) -> "PreparedGemv":
        """A dense y = W x + b on an output-major weight w [out, in] (nn.Linear's own layout: the output head)."""
        return PreparedGemv(self, w, bias, 0.0, dtype, threads or torch.get_num_threads(), output_major=True)

    def gemv(self, x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: float,
             threads: int | None = None) -> tuple[torch.Tensor, int]:
        """x: [in] float32 or bfloat16, contiguous; wt: [in, out] float32 or bfloat16, contiguous;
        bias: [out] or None. y has x's dtype."""
        return self.prepare(wt, bias, tau, x.dtype, threads).run(x)

    def read_sum(self, buf: torch.Tensor, threads: int | None = None) -> float:
        """Sum of a float32 buffer: times how fast this machine reads memory with these threads."""
        return float(self.lib.spon_read_sum(buf.data_ptr(), buf.numel(), threads or torch.get_num_threads()))


def rows_readable(wt: torch.Tensor) -> bool:
    """Whether the sparse kernel reads this input-major weight [in, out] in place: each row's columns contiguous, rows
    ld >= out apart (ld = out alone; more for a layer inside its siblings' fused rows, `decode.prepare_decode_`)."""
    return wt.dim() == 2 and (wt.shape[1] <= 1 or wt.stride(1) == 1) and (wt.shape[0] <= 1 or wt.stride(0) >= wt.shape[1])


def row_stride(wt: torch.Tensor) -> int:
    """The distance between consecutive rows of a 2-D weight, in elements (its width where it has one row)."""
    return wt.stride(0) if wt.shape[0] > 1 else wt.shape[1]


class _Plan(ctypes.Structure):  # mirrors spon_plan in spon_plan.h
    _fields_ = [("wt", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("acc", ctypes.c_void_p), ("idx", ctypes.c_void_p),
                ("val", ctypes.c_void_p), ("n_in", ctypes.c_int64), ("n_out", ctypes.c_int64), ("tau", ctypes.c_float),
                ("nthreads", ctypes.c_int), ("io_bf16", ctypes.c_int), ("w_bf16", ctypes.c_int),
                ("bias_bf16", ctypes.c_int), ("ld", ctypes.c_int64)]


class PreparedGemv:
    """One layer's kernel call, arguments packed once: a call is one allocation and one foreign call.

    Holds the tensors it points to (weight, float32 bias, buffers), so the pointers stay valid.
    """

    def __init__(self, kernel: CpuKernel, wt: torch.Tensor, bias: torch.Tensor | None, tau: float, dtype: torch.dtype,
                 threads: int, output_major: bool = False):
        laid_out = wt.is_contiguous() if output_major else rows_readable(wt)
        if dtype not in CpuKernel.IO or not kernel.supports(wt.dtype) or not laid_out:
            raise ValueError(f"no prepared CPU call for x {dtype} and weight {wt.dtype} (strides {wt.stride()})")
        n_in, n_out = (wt.shape[1], wt.shape[0]) if output_major else wt.shape
        self.wt, self.dtype, self.n_in, self.n_out = wt, dtype, n_in, n_out
        self.bias = bias.float().contiguous() if bias is not None else None
        self.scratch = Scratch(n_in, n_out, threads, accumulators=not output_major)
        acc = self.scratch.acc.data_ptr() if self.scratch.acc is not None else None
        self.args = _Plan(wt.data_ptr(), self.bias.data_ptr() if self.bias is not None else None, acc,
                          self.scratch.idx.data_ptr(), self.scratch.val.data_ptr(), n_in, n_out, tau, threads,
                          int(dtype == torch.bfloat16), int(wt.dtype == torch.bfloat16), 0, row_stride(wt))
        self.ptr = ctypes.addressof(self.args)
        self.fn = kernel.lib.spon_dense_plan if output_major else kernel.lib.spon_gemv_plan

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """x: [in] contiguous, of the prepared dtype -> (y [out] of the same dtype, number of kept inputs)."""
        y = torch.empty(self.n_out, dtype=self.dtype)
        kept = self.fn(self.ptr, x.data_ptr(), y.data_ptr())
        return y, self.n_in if kept is None else int(kept)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


class Scratch:
    """The kernel's working buffers for one layer shape, allocated once: kept indices and values, and one
    float32 accumulator per thread (the sparse kernel's; the dense head kernel needs none)."""

    def __init__(self, n_in: int, n_out: int, threads: int, accumulators: bool = True):
        self.idx = torch.empty(n_in, dtype=torch.int64)
        self.val = torch.empty(n_in, dtype=torch.float32)
        self.acc = torch.empty(threads * n_out, dtype=torch.float32) if accumulators else None


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
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:  # a failed build or load: plain torch, said once
        warnings.warn(f"spon: sparse CPU kernel unavailable ({e}); decoding falls back to plain torch (no speed-up)", stacklevel=2)
        return None

"""The quantized sparse GEMV as a PyTorch operator, `torch.ops.spon.quant_gemv`, so `torch.compile` captures a
quantized model's single-token step whole. The CPU implementation is C++ (op_quant.cpp, linked to the kernel's library
and built on first use, like op_cpu.cpp): a call never enters Python. Where it cannot be built, a Python
implementation calls the same kernel through ctypes (or, without a C compiler, the plain-torch reference)."""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import torch

from spon.serving.kernels.cpu import compile_library
from spon.serving.kernels.quant_cpu import SOURCE, QuantGemv, quant_kernel, quant_kernel_path
from spon.serving.quantized import KINDS, QuantWeight

__all__ = ["quant_gemv_op", "native_quant"]

OP_SOURCE = SOURCE.with_name("op_quant.cpp")
HEADER = SOURCE.with_name("spon_qplan.h")
KIND_NAMES = {v: k for k, v in KINDS.items()}

_lib = torch.library.Library("spon", "FRAGMENT")  # noqa: TOR901  kept alive for the process
_lib.define("quant_gemv(Tensor x, Tensor q, Tensor? hb, Tensor scale, Tensor? minimum, Tensor? bias, float tau, "
            "int block, int kind, float offset=0.0) -> Tensor")


def quant_gemv_op(x, q, hb, scale, minimum, bias, tau, block, kind, offset=0.0):
    """W S(x) + b for one token of a quantized weight (`QuantWeight`'s tensors); [..., out] in x's dtype."""
    out = scale.shape[1]
    weight = QuantWeight("?", out, x.shape[-1], block, KIND_NAMES[kind], q, scale, minimum, hb, offset)
    y = QuantGemv(weight, bias, float(tau))(x.reshape(-1).float())
    return y.to(x.dtype).view(*x.shape[:-1], out)


def _fake(x, q, hb, scale, minimum, bias, tau, block, kind, offset=0.0):
    return x.new_empty((*x.shape[:-1], scale.shape[1]))


def _load_native() -> bool:
    if os.environ.get("SPON_PYTHON_OP") or quant_kernel() is None:
        return False
    from torch.utils import cpp_extension

    try:
        cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
        if not cxx:
            raise RuntimeError("no C++ compiler (g++ or c++) on PATH")
        lib = quant_kernel_path()
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        command = [cxx, "-O2", "-std=c++20", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                   *[f"-I{p}" for p in cpp_extension.include_paths()], f"-I{HEADER.parent}", str(OP_SOURCE), str(lib),
                   f"-Wl,-rpath,{lib.parent}", *[f"-L{p}" for p in cpp_extension.library_paths()], "-ltorch_cpu", "-lc10"]
        key = OP_SOURCE.read_bytes() + HEADER.read_bytes() + " ".join(command).encode() + torch.__version__.encode()
        torch.ops.load_library(str(compile_library("spon_qop", key, command)))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"spon: C++ quantized operator unavailable ({e}); the kernel is called from Python", stacklevel=2)
        return False
    return True


native_quant = _load_native()
if not native_quant:
    _lib.impl("quant_gemv", quant_gemv_op, "CPU")
torch.library.register_fake("spon::quant_gemv", _fake, lib=_lib)

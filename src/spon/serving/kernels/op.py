"""The sparse GEMV as a PyTorch operator, `torch.ops.spon.sparse_gemv`, so `torch.compile` captures a whole
single-token step without graph breaks (a fake implementation gives the output's shape and dtype);
`torch.ops.spon.sparse_gemv_multi`, the same for several layers that read one input (q/k/v; gate/up) in one call,
which the compiled graph's pass (grouping.py) puts in place of their separate calls; and
`torch.ops.spon.dense_gemv`, a dense single-token GEMV on nn.Linear's own [out, in] layout for the output head
(the C kernel on the CPU; F.linear elsewhere). Whether the head uses it or torch's own GEMV is chosen per host by
`DecodeHead` (decode_head.py): which is faster differs between machines.

One operator for every device: on the CPU it calls the C kernel through a `GemvPlan` prepared once per layer (kept
in a small cache keyed by the storage and version of the weight, bias and threshold tensors and the input dtype);
on CUDA the Triton kernel; elsewhere the plain-torch reference.

Registered with `torch.library.Library` (a schema and one implementation per dispatch key) rather than
`torch.library.custom_op`: the latter's Python wrappers (autograd, aliasing checks, a dynamo-disable frame) cost
about 20 us a call, several milliseconds per token over a model's 200-odd linears. The CPU implementations are C++
(op_cpu.cpp, built on first use like the kernel) where a C++ compiler and torch's headers are at hand: a call then
never enters Python (measured 17 us a call through the Python implementation, whose plan lookup, buffer and ctypes
call cost 13 us of it). Elsewhere the Python implementations below serve the CPU too. The operator has no autograd
formula: it serves inference only (training uses the masked matmul).
"""

from __future__ import annotations

import os
import subprocess
import warnings
from collections import OrderedDict

import torch

from spon.serving.kernels import GemvPlan
from spon.serving.kernels.cpu import CpuKernel, cpu_kernel, cpu_operator_library

__all__ = ["sparse_gemv_op", "sparse_gemv_multi_op", "dense_gemv_op", "PLAN_CACHE_SIZE", "native_cpu"]

PLAN_CACHE_SIZE = 4096  # prepared layers kept: every sparse linear of a 7B model several times over
_plans: OrderedDict = OrderedDict()


def _cached(key: tuple, build):
    """The plan under `key`, built by `build()` on a miss; least recently used plans leave first."""
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = build()
        if len(_plans) > PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
    else:
        _plans.move_to_end(key)
    return plan


def _plan(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor) -> GemvPlan:
    key = (wt.data_ptr(), wt._version, wt.shape, wt.dtype, None if bias is None else (bias.data_ptr(), bias._version),
           tau.data_ptr(), tau._version, x.dtype, x.device)  # no tensor value read: a lookup costs no sync

    def build():
        # holds wt, bias and tau: their storage cannot be reused for another tensor while the key is cached
        plan = GemvPlan(wt, bias, float(tau), x.dtype)
        plan.tau_tensor = tau
        return plan

    return _cached(key, build)


def sparse_gemv_op(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor) -> torch.Tensor:
    """W S(x) + b for one token: x [..., in] with one token, wt [in, out] input-major (rows of contiguous columns; CUDA:
    contiguous), bias [out] or None, tau a 0-d tensor.

    Returns [..., out] in x's dtype (float32 accumulation), reading only the weight rows of kept inputs.
    """
    y = _plan(x, wt, bias, tau)(x.reshape(-1))
    return y.view(*x.shape[:-1], wt.shape[1])


def sparse_gemv_multi_op(x: torch.Tensor, wt: list[torch.Tensor], bias: list[torch.Tensor | None],
                         tau: list[torch.Tensor]) -> list[torch.Tensor]:
    """Several layers that read the same one-token x: [sparse_gemv_op(x, wt[i], bias[i], tau[i]) for each i]. The C++
    implementation runs them in one kernel call; this one (CUDA, or a CPU without the C++ build) one by one."""
    return [sparse_gemv_op(x, w, b, t) for w, b, t in zip(wt, bias, tau, strict=True)]


def dense_gemv_op(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """W x + b for one token: x [..., in], w [out, in] (contiguous), bias [out] or None; [..., out] in x's dtype."""
    key = ("dense", w.data_ptr(), w._version, w.shape, w.dtype, None if bias is None else (bias.data_ptr(), bias._version),
           x.dtype, x.device)

    def build():
        k = cpu_kernel() if x.device.type == "cpu" else None
        usable = k is not None and k.supports(w.dtype) and x.dtype in CpuKernel.IO and w.is_contiguous()
        return k.prepare_dense(w, bias, x.dtype) if usable else False  # False: F.linear

    plan = _cached(key, build)
    if plan is False:
        return torch.nn.functional.linear(x, w, bias)
    return plan(x.reshape(-1).contiguous()).view(*x.shape[:-1], w.shape[0])


def _fake(x, wt, bias, tau):
    return x.new_empty((*x.shape[:-1], wt.shape[1]))


def _fake_multi(x, wt, bias, tau):
    return [x.new_empty((*x.shape[:-1], w.shape[1])) for w in wt]


def _fake_dense(x, w, bias):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


_lib = torch.library.Library("spon", "DEF")  # noqa: TOR901  (kept alive for the process: the registration lives with it)
_lib.define("sparse_gemv(Tensor x, Tensor wt, Tensor? bias, Tensor tau) -> Tensor")
_lib.define("dense_gemv(Tensor x, Tensor w, Tensor? bias) -> Tensor")
_lib.define("sparse_gemv_multi(Tensor x, Tensor[] wt, Tensor?[] bias, Tensor[] tau) -> Tensor[]")


def _load_native_cpu() -> bool:
    """Load the C++ CPU implementations (op_cpu.cpp); False, said once, where they cannot be built or loaded."""
    kernel = None if os.environ.get("SPON_PYTHON_OP") else cpu_kernel()
    if kernel is None:
        return False
    try:
        torch.ops.load_library(str(cpu_operator_library(kernel)))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"spon: C++ operator unavailable ({e}); the CPU kernel is called from Python (slower per call)",
                      stacklevel=2)
        return False
    return True


native_cpu = _load_native_cpu()  # True: the CPU dispatch key runs op_cpu.cpp
for _key in ("CUDA",) if native_cpu else ("CPU", "CUDA"):
    _lib.impl("sparse_gemv", sparse_gemv_op, _key)
    _lib.impl("dense_gemv", dense_gemv_op, _key)
    _lib.impl("sparse_gemv_multi", sparse_gemv_multi_op, _key)
torch.library.register_fake("spon::sparse_gemv", _fake, lib=_lib)
torch.library.register_fake("spon::dense_gemv", _fake_dense, lib=_lib)
torch.library.register_fake("spon::sparse_gemv_multi", _fake_multi, lib=_lib)

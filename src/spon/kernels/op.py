"""The sparse GEMV as a PyTorch custom operator, `torch.ops.spon.sparse_gemv`, so `torch.compile` captures a whole
single-token step without graph breaks (a fake implementation gives the output's shape and dtype).

One operator for every device: on the CPU it calls the C kernel through a `GemvPlan` prepared once per layer (kept
in a small cache keyed by the weight's and bias's storage and versions, the threshold and the dtype); on CUDA the
Triton kernel; elsewhere the plain-torch reference.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from . import GemvPlan

__all__ = ["sparse_gemv_op", "PLAN_CACHE_SIZE"]

PLAN_CACHE_SIZE = 4096  # prepared layers kept: every sparse linear of a 7B model several times over
_plans: OrderedDict = OrderedDict()


def _plan(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: float) -> GemvPlan:
    key = (wt.data_ptr(), wt._version, wt.shape, wt.dtype, None if bias is None else (bias.data_ptr(), bias._version),
           tau, x.dtype, x.device)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = GemvPlan(wt, bias, tau, x.dtype)  # holds wt and bias: their storage cannot be reused
        if len(_plans) > PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
    else:
        _plans.move_to_end(key)
    return plan


@torch.library.custom_op("spon::sparse_gemv", mutates_args=())
def sparse_gemv_op(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor) -> torch.Tensor:
    """W S(x) + b for one token: x [..., in] with one token, wt [in, out] contiguous, bias [out] or None, tau a 0-d tensor.

    Returns [..., out] in x's dtype (float32 accumulation), reading only the weight rows of kept inputs.
    """
    y = _plan(x, wt, bias, float(tau))(x.reshape(-1).contiguous())
    return y.view(*x.shape[:-1], wt.shape[1])


@sparse_gemv_op.register_fake
def _(x, wt, bias, tau):
    return x.new_empty((*x.shape[:-1], wt.shape[1]))

"""Serving: prepare a sparsified model for fast batch-1 decoding, and switch the kernels off to compare.

After `prepare_decode_(model)` every `SparseLinear` keeps its weight input-major ([in, out], each input's
weights one contiguous row), prepared once; single-token forwards go through the sparse GEMV kernel
(CPU: C/OpenMP; GPU: Triton), and prefill (several tokens) through a dense matmul on the masked input,
on a transposed view of the same storage, so the weights are not held twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .fold import fold_
from .sparsify import set_attr, sparse_modules

__all__ = ["prepare_decode_", "masked_dense", "decode_backend"]


@torch.no_grad()
def prepare_decode_(model: nn.Module, *, fold: bool = True) -> nn.Module:
    """Lay out each sparse layer's weight input-major for the decode kernel, in place.

    fold: first fold trained SPON vectors into the biases (exact; zero cost at inference), so every
    layer can take the kernel. Safe to call twice.
    """
    mods = sparse_modules(model)
    if fold and any(m.alpha.any() or m.neurons is not None for m in mods.values()):
        fold_(model)
    for m in mods.values():
        if m.decode_wt is not None:
            continue
        if m.transposed:  # GPT-2 Conv1D stores [in, out] already
            m.decode_wt = m.weight.detach().contiguous()
        else:
            wt = m.weight.detach().t().contiguous()
            m.weight = nn.Parameter(wt.t(), requires_grad=False)  # a view: dense/prefill matmuls use the same bytes
            m.decode_wt = wt
    return model


@contextlib.contextmanager
def masked_dense(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this block single tokens take the plain path too (F.linear on the masked input): the reference."""
    with set_attr(list(sparse_modules(model).values()), "use_kernel", False):
        yield model


def decode_backend(model: nn.Module) -> str:
    """Which kernel single-token steps use: "cpu", "triton", "torch" (fallback) or "none" (not prepared)."""
    from .kernels import backend_for

    mods = [m for m in sparse_modules(model).values() if m.decode_wt is not None]
    if not mods:
        return "none"
    m = mods[0]
    return backend_for(torch.empty(0, device=m.decode_wt.device), m.decode_wt)

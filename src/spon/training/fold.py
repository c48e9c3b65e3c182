"""Fold each spontaneous vector into its layer's bias: b' = b + W alpha (exact, zero inference cost)."""

from __future__ import annotations

import torch
from torch import nn

from spon.sparsity.sparsify import sparse_modules

__all__ = ["fold_", "folded_bias"]


def folded_bias(weight: torch.Tensor, bias: torch.Tensor | None, alpha: torch.Tensor) -> torch.Tensor:
    """b + W alpha, computed in float32 and returned in the weight's dtype; weight: [out, in], alpha: [in]."""
    out = weight.float() @ alpha.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(weight.dtype)


@torch.no_grad()
def fold_(model: nn.Module) -> nn.Module:
    """Replace every `SparseLinear`'s alpha by the folded bias `b + W alpha`, in place.

    A layer without a bias gets one (only in sparse mode; `dense(model)` still computes `W x + b`).
    The alphas are zeroed afterwards, so folding twice changes nothing.
    """
    for mod in sparse_modules(model).values():
        if mod.folded:
            base = mod.folded_bias
            mod.folded_bias = folded_bias(mod.matrix, base, mod.alpha)
        else:
            mod.folded_bias = folded_bias(mod.matrix, mod.bias, mod.alpha)
        if mod.neurons is not None:  # ablation form: its output vector goes into the bias as well
            mod.folded_bias = (mod.folded_bias.float() + (mod.neurons @ mod.rates).float()).to(mod.folded_bias.dtype)
            mod.neurons = mod.rates = None
        mod.alpha.zero_()
    return model

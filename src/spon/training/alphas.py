"""A training-free start for the spontaneous vectors: alpha = E[x - S(x)], the mean of what sparsity drops.

First-order view (PAPER.md section 3): the output error of a layer is W (x - S(x)); its best constant
correction in the plain least-squares sense is W E[x - S(x)], i.e. alpha = the mean dropped input.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from spon.sparsity.hooks import collect_inputs
from spon.sparsity.sparsify import sparse_modules, without_spon
from spon.sparsity.selection import dropped, sparsified_positions

__all__ = ["mean_dropped", "init_alphas_"]


def mean_dropped(x: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum over tokens of the dropped part x * (|x| <= tau), and the token count; x: [..., D]."""
    d = dropped(x, tau)
    return d.reshape(-1, x.shape[-1]).float().sum(0), d.numel() // x.shape[-1]


@torch.no_grad()
def init_alphas_(model: nn.Module, batches: Iterable[torch.Tensor], *, progress: bool = True) -> dict[str, float]:
    """Set every alpha to the mean dropped input of its layer, measured in the plain sparse model.

    batches: input_ids [B, T]. Returns the norm of each alpha by module name.
    """
    mods = sparse_modules(model)
    sums = {name: [torch.zeros(m.in_features), 0] for name, m in mods.items()}

    def record(name, mod, x):  # x: [B, T, D]
        pos = sparsified_positions(x.shape[-2], mod.tokens, mod.last_fraction)
        total, n = mean_dropped(x[..., pos, :], mod.threshold)
        sums[name][0] += total.cpu()
        sums[name][1] += n

    with without_spon(model):
        collect_inputs(model, batches, record, desc="mean dropped input", progress=progress)
    for name, m in mods.items():
        total, count = sums[name]
        m.alpha.copy_(total / max(1, count))
    return {name: float(m.alpha.norm()) for name, m in mods.items()}

"""`SparseActivation`: CATS's rule, an MLP activation whose small outputs are zeroed, |act(gate(x))| <= tau.

Wrapping the activation module (`mlp.act_fn`, `mlp.act`, ...) makes the MLP's down projection see exact
zeros in the same channels whose up-projection rows are then not needed; no MLP code is rewritten.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from spon.sparsity.selection import apply_to_positions, keep_count, keep_mask, sparsified_positions
from spon.sparsity.sparse_linear import CountsZeros, FrozenConstants

__all__ = ["SparseActivation", "MLP_ACTIVATION"]

MLP_ACTIVATION = re.compile(r"\.\d+\.(mlp|feed_forward|ffn)\.(act_fn|act|activation_fn|activation)$")


class SparseActivation(FrozenConstants, CountsZeros, nn.Module):
    constants = ("threshold",)  # a frozen Parameter, like SparseLinear's (`FrozenConstants`)

    def __init__(self, act: nn.Module, tokens: str = "all", last_fraction: float = 0.5):
        super().__init__()
        self.act = act
        self.threshold = torch.tensor(-1.0)
        self.topk_sparsity: float | None = None  # top-k selection: this fraction of channels dropped per token
        self.sparse = True
        self.tokens, self.last_fraction = tokens, last_fraction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(x)
        if not self.sparse:
            return a
        positions = sparsified_positions(a.shape[-2] if a.dim() >= 2 else 1, self.tokens, self.last_fraction)
        keep = None if self.topk_sparsity is None else keep_count(a.shape[-1], self.topk_sparsity)
        out, mask = apply_to_positions(a, positions, lambda t: keep_mask(t.abs(), self.threshold.to(t.device), keep))
        self.count(mask)
        return out

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold):.4g}, topk_sparsity={self.topk_sparsity}"

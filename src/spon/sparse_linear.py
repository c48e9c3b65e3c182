"""`SparseLinear`: an `nn.Linear` whose input is sparsified, plus a spontaneous-neuron vector.

    sparse:  y = W (S(x) + alpha) + b          S(x) = x * (|x| > tau) on the selected tokens
    folded:  y = W S(x) + (b + W alpha)        (same numbers, no extra work)
    dense:   y = W x + b                       (the teacher; `with spon.dense(model):`)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .threshold import apply_to_positions, sparsified_positions

__all__ = ["SparseLinear"]


class SparseLinear(nn.Module):
    """Wraps the weight and bias of an `nn.Linear` (shared, not copied) with input sparsity and SPON."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("threshold", torch.tensor(-1.0, device=device))  # -1: nothing dropped
        self.alpha = nn.Parameter(torch.zeros(in_features, device=device, dtype=torch.float32), requires_grad=False)
        self.register_buffer("folded_bias", None)  # b + W alpha once folded
        self.sparse = True  # False inside `dense(model)`
        self.tokens, self.last_fraction = "all", 0.5
        self.stats: list[float] | None = None  # [zeros, entries] while measuring sparsity

    @classmethod
    def from_linear(cls, linear: nn.Linear, tokens: str = "all", last_fraction: float = 0.5) -> "SparseLinear":
        w = linear.weight
        mod = cls(linear.in_features, linear.out_features, bias=False, device=w.device, dtype=w.dtype)
        mod.weight = linear.weight
        mod.bias = linear.bias
        mod.tokens, mod.last_fraction = tokens, last_fraction
        return mod

    def to_linear(self) -> nn.Linear:
        """The plain dense layer back (the original weight and bias objects)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight = self.weight
        lin.bias = self.bias
        return lin

    @property
    def folded(self) -> bool:
        return self.folded_bias is not None

    def sparse_input(self, x: torch.Tensor) -> torch.Tensor:
        """S(x) on the selected tokens; x: [..., T, in_features]."""
        positions = sparsified_positions(x.shape[-2] if x.dim() >= 2 else 1, self.tokens, self.last_fraction)
        xs = apply_to_positions(x, self.threshold, positions)
        if self.stats is not None:
            sel = x[..., positions, :] if x.dim() >= 2 else x
            self.stats[0] += float((sel.abs() <= self.threshold).sum())
            self.stats[1] += float(sel.numel())
        return xs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sparse:
            return F.linear(x, self.weight, self.bias)
        xs = self.sparse_input(x)
        if self.folded:
            return F.linear(xs, self.weight, self.folded_bias)
        return F.linear(xs + self.alpha.to(xs.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"threshold={float(self.threshold):.4g}, tokens={self.tokens}, folded={self.folded}"
        )

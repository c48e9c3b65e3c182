"""`SparseLinear`: an `nn.Linear` whose input is sparsified, plus a spontaneous-neuron vector.

    sparse:  y = W (S(x) + alpha) + b          S(x) = x * (|x| > tau) on the selected tokens
    folded:  y = W S(x) + (b + W alpha)        (same numbers, no extra work)
    dense:   y = W x + b                       (the teacher; `with spon.dense(model):`)

Ablation only: `neurons` [out, k] and `rates` [k] are k spontaneous neurons of the original formulation, each
with its own output weights, adding `neurons @ rates` to the output (also folded into the bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rules import keep_mask, score
from .threshold import apply_to_positions, sparsified_positions

__all__ = ["SparseLinear", "is_linear", "linear_shape"]


def is_conv1d(mod: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2 family): a linear layer whose weight is stored [in, out]."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


def linear_shape(mod: nn.Module) -> list[int]:
    """[out_features, in_features] of an `nn.Linear`, `Conv1D` or `SparseLinear`."""
    w = mod.weight
    return [w.shape[1], w.shape[0]] if is_conv1d(mod) or getattr(mod, "transposed", False) else [w.shape[0], w.shape[1]]


def is_linear(mod: nn.Module) -> bool:
    """A plain dense linear layer that `SparseLinear` can wrap: `nn.Linear` or transformers' `Conv1D`."""
    return type(mod) is nn.Linear or is_conv1d(mod)


_DECODE_INPUTS = frozenset({"weight", "bias", "threshold", "alpha", "folded_bias", "neurons", "rates", "decode_wt"})


class _DecodeStep:
    """A layer's prepared decode step and what it was built from (checked in well under a microsecond)."""

    __slots__ = ("plan", "dtype", "watch", "versions")

    def __init__(self, mod: "SparseLinear", dtype: torch.dtype):
        bias = mod.folded_bias if mod.folded else mod.bias
        self.dtype = dtype
        self.watch = tuple(t for t in (mod.threshold, mod.alpha, bias) if t is not None)
        self.versions = tuple(t._version for t in self.watch)
        self.plan = None
        if mod.folded or (mod.neurons is None and not mod.alpha.any()):  # unfolded vectors: the plain path
            from .kernels import GemvPlan

            self.plan = GemvPlan(mod.decode_wt, bias, float(mod.threshold), dtype)

    def stale(self, dtype: torch.dtype) -> bool:
        return dtype != self.dtype or any(t._version != v for t, v in zip(self.watch, self.versions))


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
        self.neurons: nn.Parameter | None = None  # ablation: [out, k] output weights of k spontaneous neurons
        self.rates: nn.Parameter | None = None  # ablation: [k] their constant activations
        self.score_scale: torch.Tensor | None = None  # WINA: the weight's column norms [in]; None: plain |x|
        self.keep: int | None = None  # top-k selection: entries kept per token; None: the calibrated threshold
        self.lowrank_u: torch.Tensor | None = None  # R-Sparse: W ~ U V; the dropped part goes through U V
        self.lowrank_v: torch.Tensor | None = None
        self.decode_wt: torch.Tensor | None = None  # input-major weight [in, out] for the decode kernel (prepare_decode_)
        self.use_kernel = True  # False inside `masked_dense(model)`: single tokens go through F.linear too
        self._plan: _DecodeStep | None = None  # the prepared decode step; dropped when its inputs are reassigned
        self.sparse = True  # False inside `dense(model)`
        self.tokens, self.last_fraction = "all", 0.5
        self.stats: list[float] | None = None  # [zeros, entries] while measuring sparsity
        self.transposed = False  # True when wrapping a Conv1D, whose weight is [in, out]
        self._dense_cls: type = nn.Linear

    @classmethod
    def from_linear(cls, linear: nn.Module, tokens: str = "all", last_fraction: float = 0.5) -> "SparseLinear":
        """Wrap an `nn.Linear` (or a GPT-2 `Conv1D`), sharing its weight and bias."""
        w = linear.weight
        out_f, in_f = linear_shape(linear)
        mod = cls(in_f, out_f, bias=False, device="meta")
        mod.alpha = nn.Parameter(torch.zeros(in_f, device=w.device), requires_grad=False)
        mod.threshold = torch.tensor(-1.0, device=w.device)
        mod.weight, mod.bias = linear.weight, linear.bias
        mod.transposed, mod._dense_cls = is_conv1d(linear), type(linear)
        mod.tokens, mod.last_fraction = tokens, last_fraction
        mod.neurons = mod.rates = None
        mod.decode_wt, mod.use_kernel = None, True
        mod.score_scale = mod.keep = mod.lowrank_u = mod.lowrank_v = None
        return mod

    def to_linear(self) -> nn.Module:
        """The plain dense layer back, of its original class, with the original weight and bias objects."""
        if self.transposed:
            lin = self._dense_cls.__new__(self._dense_cls)
            nn.Module.__init__(lin)
            lin.nf, lin.nx = self.out_features, self.in_features
        else:
            lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    @property
    def matrix(self) -> torch.Tensor:
        """The weight as [out_features, in_features] (a view for Conv1D)."""
        return self.weight.t() if self.transposed else self.weight

    @property
    def folded(self) -> bool:
        return self.folded_bias is not None

    def sparse_input(self, x: torch.Tensor) -> torch.Tensor:
        """S(x) on the selected tokens; x: [..., T, in_features]."""
        positions = sparsified_positions(x.shape[-2] if x.dim() >= 2 else 1, self.tokens, self.last_fraction)
        xs, mask = apply_to_positions(x, positions, self.select)
        if self.stats is not None and mask is not None:
            self.stats[0] += float((~mask).sum())
            self.stats[1] += float(mask.numel())
        return xs

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """The kept entries of x (boolean mask): score above the threshold, or the top `keep` of each token."""
        return keep_mask(score(x, self.score_scale), self.threshold, self.keep)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """What the threshold is compared with: |x|, or |x| times the column norms (WINA)."""
        return score(x, self.score_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sparse:
            return F.linear(x, self.matrix, self.bias)
        if (self.decode_wt is not None and self.use_kernel and x.numel() == self.in_features and self.stats is None
                and self.score_scale is None and self.keep is None and self.lowrank_u is None):
            y = self._decode(x)
            if y is not None:
                return y
        xs = self.sparse_input(x)
        if self.folded:
            y = F.linear(xs, self.matrix, self.folded_bias)
        else:
            y = F.linear(xs + self.alpha.to(xs.dtype), self.matrix, self.bias)
            if self.neurons is not None:
                y = y + (self.neurons @ self.rates).to(y.dtype)
        if self.lowrank_u is not None:  # R-Sparse: the dropped inputs through the low-rank W
            y = y + F.linear(F.linear(x - xs, self.lowrank_v.to(x.dtype)), self.lowrank_u.to(x.dtype))
        return y

    def _decode(self, x: torch.Tensor) -> torch.Tensor | None:
        """One token through the sparse GEMV kernel (W S(x) + bias, reading only kept rows); None: not possible.

        The layer's step (bias in float32, threshold, buffers) is prepared on the first call and again only
        when what it was built from changed: an in-place change of the threshold, bias or vectors (tensor
        versions), a new tensor assigned to any of them (`__setattr__`), or another input dtype.
        """
        step = self._plan
        if step is None or step.stale(x.dtype):
            step = self._plan = _DecodeStep(self, x.dtype)
        if step.plan is None:
            return None
        return step.plan(x.reshape(-1)).view(*x.shape[:-1], self.out_features)

    def __setattr__(self, name: str, value) -> None:
        if name in _DECODE_INPUTS:
            self.__dict__["_plan"] = None
        super().__setattr__(name, value)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the prepared step behind (it holds raw pointers); it is rebuilt on use."""
        return {**self.__dict__, "_plan": None}

    def spon_output(self) -> torch.Tensor:
        """What the spontaneous activity adds to the output, W alpha (+ neurons @ rates), in float32: [out]."""
        out = self.matrix.float() @ self.alpha.float()
        if self.neurons is not None:
            out = out + (self.neurons @ self.rates).float()
        return out

    @property
    def has_spon(self) -> bool:
        return self.folded or bool(self.alpha.any()) or (self.neurons is not None and bool((self.neurons @ self.rates).any()))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"threshold={float(self.threshold):.4g}, tokens={self.tokens}, folded={self.folded}"
        )

"""`SparseLinear`: an `nn.Linear` whose input is sparsified, plus a spontaneous-neuron vector.

    sparse:  y = W (S(x) + alpha) + b          S(x) = x * (|x| > tau) on the sparsified tokens
    folded:  y = W S(x) + (b + W alpha)        (same numbers, no extra work)
    dense:   y = W x + b                       (the teacher; `with spon.dense(model):`)

SPON acts exactly where S acts: tokens that the token mode leaves dense (`tokens="last"` or "decode")
compute the plain `W x + b`, with the original bias, also once folded.

Ablation only: `neurons` [out, k] and `rates` [k] are k spontaneous neurons of the original formulation, each
with its own output weights, adding `neurons @ rates` to the output (also folded into the bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spon.sparsity.selection import keep_mask, score, sparsified_positions

__all__ = ["SparseLinear", "SelectionRule", "FrozenConstants", "is_linear", "linear_shape", "linear_matrix"]


def is_conv1d(mod: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2 family): a linear layer whose weight is stored [in, out]."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


def linear_matrix(mod: nn.Module) -> torch.Tensor:
    """The weight of an `nn.Linear`, `Conv1D` or `SparseLinear` as [out_features, in_features]."""
    return mod.weight.t() if is_conv1d(mod) or getattr(mod, "transposed", False) else mod.weight


def linear_shape(mod: nn.Module) -> list[int]:
    """[out_features, in_features] of an `nn.Linear`, `Conv1D` or `SparseLinear`."""
    return list(linear_matrix(mod).shape)


def is_linear(mod: nn.Module) -> bool:
    """A plain dense linear layer that `SparseLinear` can wrap: `nn.Linear`, transformers' `Conv1D`, or a subclass of
    `nn.Linear` (Falcon's `FalconLinear`, ...) whose forward computes `F.linear` on a plain weight (`computes_f_linear`);
    quantised or otherwise altered subclasses are left alone."""
    return type(mod) is nn.Linear or is_conv1d(mod) or (isinstance(mod, nn.Linear) and computes_f_linear(mod))


@torch.no_grad()
def computes_f_linear(mod: nn.Linear) -> bool:
    """Whether a subclass of `nn.Linear` is a plain linear layer in another dress: its weight a floating-point tensor of
    shape [out_features, in_features] in memory, and its forward on a random probe (two rows) equal to
    `F.linear(x, weight, bias)` up to rounding."""
    w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
    if type(w) not in (nn.Parameter, torch.Tensor) or not w.is_floating_point() or w.is_meta \
            or tuple(w.shape) != (mod.out_features, mod.in_features) \
            or (b is not None and (type(b) not in (nn.Parameter, torch.Tensor) or tuple(b.shape) != (mod.out_features,))):
        return False
    x = torch.randn(2, mod.in_features, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    try:
        y = mod(x)
    except Exception:  # noqa: BLE001  a forward that wants more than one tensor is not a plain linear layer
        return False
    ref = F.linear(x, w, b)
    tol = 1e-5 if w.dtype == torch.float32 else 2e-2
    return isinstance(y, torch.Tensor) and y.shape == ref.shape and torch.allclose(y.float(), ref.float(), rtol=tol, atol=tol)


class CountsZeros:
    """Counts the zeros a sparse module makes while `measure_sparsity` runs (`stats` = [zeros, entries])."""

    stats: list[float] | None = None

    def count(self, mask: torch.Tensor | None) -> None:
        if self.stats is not None and mask is not None:
            self.stats[0] += float((~mask).sum())
            self.stats[1] += float(mask.numel())


class SelectionRule(nn.Module):
    """One layer's rule state (non-persistent buffers, so `model.to(...)` moves it); plain magnitude by default.

    score_scale: WINA's column norms [in] (None: |x|); keep: top-k entries per token (None: the threshold);
    lowrank_u [out, r], lowrank_v [r, in]: R-Sparse's low-rank path for the dropped inputs.
    """

    def __init__(self, rule: str = "magnitude", *, score_scale=None, keep: int | None = None, lowrank_u=None, lowrank_v=None):
        super().__init__()
        self.rule, self.keep = rule, keep
        self.register_buffer("score_scale", score_scale, persistent=False)
        self.register_buffer("lowrank_u", lowrank_u, persistent=False)
        self.register_buffer("lowrank_v", lowrank_v, persistent=False)

    @property
    def plain(self) -> bool:
        """Only |x| > tau decides and nothing is added for the dropped part: what the decode kernels compute."""
        return self.score_scale is None and self.keep is None and self.lowrank_u is None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return score(x, self.score_scale)

    def mask(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return keep_mask(self.scores(x), tau, self.keep)

    def extra_repr(self) -> str:
        return f"rule={self.rule}, keep={self.keep}"


class FrozenConstants:
    """A tensor assigned to one of `constants` (a module's threshold, folded bias) is kept as a frozen Parameter
    (requires_grad=False), not a buffer.

    Constants all, yet not buffers: a compiled forward run under `decode.warm_guards` re-checks the metadata of every
    buffer it reads on every call (dynamo keeps all non-Parameter tensor guards among the "differentiating" ones),
    two per sparse layer and token (420 on SmolLM2); Parameters' are checked only where they told graphs apart during
    warm-up. Same state_dict keys either way. Mixed in before `nn.Module`."""

    constants: tuple[str, ...] = ()

    def __setattr__(self, name: str, value) -> None:
        if name in self.constants and isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            value = nn.Parameter(value, requires_grad=False)
        super().__setattr__(name, value)


class SparseLinear(FrozenConstants, CountsZeros, nn.Module):
    """Wraps the weight and bias of an `nn.Linear` (shared, not copied) with input sparsity and SPON."""

    constants = ("threshold", "folded_bias")

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None, *, transposed: bool = False,
                 dense_cls: type = nn.Linear, tokens: str = "all", last_fraction: float = 0.5):
        """weight [out, in] (or [in, out] when `transposed`, as GPT-2's Conv1D stores it) and bias are shared, not copied."""
        super().__init__()
        self.weight, self.bias = weight, bias
        self.transposed, self._dense_cls = transposed, dense_cls  # the wrapped class, given back by `to_linear`
        self.out_features, self.in_features = linear_shape(self)
        device = weight.device
        # threshold and folded bias: frozen Parameters rather than buffers (`FrozenConstants`)
        self.threshold = torch.tensor(-1.0, device=device)  # -1: nothing dropped
        self.alpha = nn.Parameter(torch.zeros(self.in_features, device=device), requires_grad=False)
        self.register_parameter("folded_bias", None)  # b + W alpha once folded (used at sparsified tokens only)
        self.neurons: nn.Parameter | None = None  # ablation: [out, k] output weights of k spontaneous neurons
        self.rates: nn.Parameter | None = None  # ablation: [k] their constant activations
        self.rule = SelectionRule()  # set by `sparsify.apply_rule`
        self.sparse = True  # False inside `dense(model)`
        self.tokens, self.last_fraction = tokens, last_fraction
        self.decode = None  # `decode.DecodeState` once `prepare_decode_` ran: single tokens take the kernel

    @classmethod
    def from_linear(cls, linear: nn.Module, tokens: str = "all", last_fraction: float = 0.5) -> "SparseLinear":
        """Wrap an `nn.Linear` (or a GPT-2 `Conv1D`), sharing its weight and bias."""
        sparse = cls(linear.weight, linear.bias, transposed=is_conv1d(linear), dense_cls=type(linear), tokens=tokens,
                     last_fraction=last_fraction)
        sparse._dense_attrs = {k: v for k, v in vars(linear).items() if not k.startswith("_")}  # a subclass's own fields
        return sparse

    def to_linear(self) -> nn.Module:
        """The plain dense layer back, of its original class, with the original weight and bias objects."""
        if self.transposed or self._dense_cls is not nn.Linear:  # Conv1D, or a subclass of nn.Linear
            lin = self._dense_cls.__new__(self._dense_cls)
            nn.Module.__init__(lin)
            if self.transposed:
                lin.nf, lin.nx = self.out_features, self.in_features
            else:
                lin.in_features, lin.out_features = self.in_features, self.out_features
            for k, v in getattr(self, "_dense_attrs", {}).items():
                setattr(lin, k, v)
        else:
            lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    @property
    def matrix(self) -> torch.Tensor:
        """The weight as [out_features, in_features] (a view for Conv1D)."""
        return linear_matrix(self)

    @property
    def unfolded_vectors(self) -> bool:
        """Spontaneous activity not yet in the bias (the plain path adds it; the kernels cannot)."""
        return not self.folded and (self.neurons is not None or bool(self.alpha.any()))

    @property
    def folded(self) -> bool:
        return self.folded_bias is not None

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """The kept entries of x (boolean mask): score above the threshold, or the top `keep` of each token."""
        return self.rule.mask(x, self.threshold)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """What the threshold is compared with: |x|, or |x| times the column norms (WINA)."""
        return self.rule.scores(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sparse:
            return F.linear(x, self.matrix, self.bias)
        if self.decode is not None and x.numel() == self.in_features and self.stats is None:
            if torch.compiler.is_compiling():  # one custom op the graph captures; everything here is static for the tracer
                if self.decode.use_kernel and self.rule.plain and (self.folded or self.decode.spon_free):
                    return torch.ops.spon.sparse_gemv(x, self.matrix.t(), self.folded_bias if self.folded else self.bias, self.threshold)
            else:
                y = self.decode.step(self, x)
                if y is not None:
                    return y
        T = x.shape[-2] if x.dim() >= 2 else 1
        positions = sparsified_positions(T, self.tokens, self.last_fraction)
        start, stop = positions.start, positions.stop
        if start == 0 and stop == T:
            return self._sparse(x)
        if start >= stop:  # no token of this input is sparsified
            return F.linear(x, self.matrix, self.bias)
        # x: [..., T, in]: dense tokens first, sparsified (with their spontaneous activity) after
        return torch.cat([F.linear(x[..., :start, :], self.matrix, self.bias), self._sparse(x[..., start:stop, :])], dim=-2)

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        """W (S(x) + alpha) + b (+ the ablation's neurons, + R-Sparse's low-rank part) on tokens that are all sparsified."""
        mask = self.select(x)
        self.count(mask)
        xs = x * mask.to(x.dtype)
        if self.folded:
            y = F.linear(xs, self.matrix, self.folded_bias)
        else:
            y = F.linear(xs + self.alpha.to(xs.dtype), self.matrix, self.bias)
            if self.neurons is not None:
                y = y + (self.neurons @ self.rates).to(y.dtype)
        if self.rule.lowrank_u is not None:  # R-Sparse: the dropped inputs through the low-rank W
            u, v = self.rule.lowrank_u.to(x.dtype), self.rule.lowrank_v.to(x.dtype)
            y = y + F.linear(F.linear(x - xs, v), u)
        return y

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        w = destination.get(prefix + "weight")
        if w is not None and w.untyped_storage().nbytes() > w.numel() * w.element_size():
            # a view into rows shared with other layers (`decode.prepare_decode_`): saved as a matrix of its own, as
            # savers that look for tensors sharing memory (Hugging Face's save_pretrained) expect
            destination[prefix + "weight"] = w.detach().contiguous()

    def __getstate__(self) -> dict:
        """Copies and pickles leave the prepared decode step behind (it holds raw pointers); it is rebuilt on use."""
        state = dict(self.__dict__)
        if state.get("decode") is not None:
            state["decode"] = state["decode"].fresh()
        return state

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

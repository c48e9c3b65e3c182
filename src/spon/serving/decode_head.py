"""The output head while serving: single tokens through the faster of two dense GEMVs on the weight as stored.

The head (lm_head) is never sparsified, yet it is a large share of the bytes a token reads (SmolLM2-135M: a fifth;
its weight is tied to the embeddings, [vocab, hidden]). `prepare_decode_` swaps it for a `DecodeHead` holding the
same parameters (ties survive): one token's logits go through `torch.ops.spon.dense_gemv` (our C kernel) or torch's
own GEMV, whichever `choose_path` timed faster on this weight on this machine; longer inputs and anything that needs
gradients through F.linear. `unsparsify_` puts the plain `nn.Linear` back.

Which of the two is faster depends on the host (on some CPUs torch's GEMV wins, on others ours by nearly 2x), so the
choice is timed where the model runs rather than fixed; `prepare_decode_` also puts the weight on huge pages first
(`huge_pages`). The measurements are in docs/RESULTS.md ("The output head").
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from spon.sparsity.swap import Restorable

__all__ = ["DecodeHead", "HEAD_PATHS", "kernel_can_serve"]

HEAD_PATHS = ("auto", "kernel", "torch")


def kernel_can_serve(weight: torch.Tensor) -> bool:
    """Whether the C kernel reads this weight (CPU, float32 or bf16, contiguous, kernel built)."""
    from spon.serving.kernels import backend_for

    return weight.device.type == "cpu" and weight.is_contiguous() \
        and backend_for(torch.empty(0, device=weight.device), weight) == "cpu"


def candidates(head: "DecodeHead") -> dict:
    """The two single-token GEMVs a head can take, by path name."""
    return {"kernel": lambda v: torch.ops.spon.dense_gemv(v, head.weight, head.bias),
            "torch": lambda v: F.linear(v, head.weight, head.bias)}


class DecodeHead(Restorable):
    def __init__(self, linear: nn.Linear, path: str = "auto"):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.use_kernel = True  # `decode.masked_dense` turns it off with the sparse kernels
        self.path = self.choose_path() if path == "auto" else path  # "kernel" or "torch"
        if self.path not in HEAD_PATHS[1:]:
            raise ValueError(f"head path {path!r}: give one of {HEAD_PATHS}")

    @torch.no_grad()
    def choose_path(self, calls: int = 3) -> str:
        """"kernel" or "torch": whichever gave one token's logits faster on this weight here (after one warm-up call
        each, `calls` calls each, alternated; median). "torch" where the kernel cannot read the weight."""
        if not kernel_can_serve(self.weight):
            return "torch"
        from spon.serving.kernels import op  # noqa: F401  registers the operator

        x = torch.randn(self.in_features, dtype=self.weight.dtype)
        paths = candidates(self)
        for fn in paths.values():
            fn(x)
        seconds = {name: [] for name in paths}
        for _ in range(calls):
            for name, fn in paths.items():
                t0 = time.perf_counter()
                fn(x)
                seconds[name].append(time.perf_counter() - t0)
        return min(seconds, key=lambda name: statistics.median(seconds[name]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and self.path == "kernel" and x.numel() == self.in_features \
                and not (torch.is_grad_enabled() and self.weight.requires_grad):
            return torch.ops.spon.dense_gemv(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear on the same parameters (no copy)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"path={self.path}"

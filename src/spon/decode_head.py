"""The output head while serving: single tokens through a dense GEMV that reads the weight as stored.

The head (lm_head) is never sparsified, yet it is a large share of the bytes a token reads (SmolLM2-135M: a fifth;
its weight is tied to the embeddings, [vocab, hidden]). `prepare_decode_` swaps it for a `DecodeHead` holding the
same parameters (ties survive): one token's logits go through `torch.ops.spon.dense_gemv`, longer inputs and
anything that needs gradients through F.linear. `unsparsify_` puts the plain `nn.Linear` back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DecodeHead"]


class DecodeHead(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.use_kernel = True  # `decode.masked_dense` turns it off with the sparse kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and x.numel() == self.in_features and not (torch.is_grad_enabled() and self.weight.requires_grad):
            return torch.ops.spon.dense_gemv(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear on the same parameters (no copy)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

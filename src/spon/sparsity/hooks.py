"""Run a model over batches while every `SparseLinear` hands its input to a callback; hooks always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from spon.sparsity.sparse_linear import SparseLinear
from spon.sparsity.sparsify import sparse_modules

__all__ = ["collect_inputs"]


@torch.no_grad()
def collect_inputs(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    fn: Callable[[str, SparseLinear, torch.Tensor], None],
    *,
    desc: str,
    progress: bool = True,
    modules: dict[str, nn.Module] | None = None,
    total: int | None = None,
) -> None:
    """Forward every batch of input_ids [B, T]; before each module runs, call fn(name, module, x).

    modules: which modules (default every `SparseLinear`); total: batches to expect, for the bar (default len(batches))."""
    modules = sparse_modules(model) if modules is None else modules
    handles = [
        mod.register_forward_pre_hook(lambda m, args, name=name: fn(name, m, args[0]))
        for name, mod in modules.items()
    ]
    device = next(model.parameters()).device
    total = total if total is not None else (len(batches) if hasattr(batches, "__len__") else None)
    try:
        for ids in tqdm(batches, desc=desc, total=total, disable=not progress):  # lazily: batches may be a stream
            model(input_ids=ids.to(device))
    finally:
        for h in handles:
            h.remove()

"""A fixed-size uniform sample of a stream of values: keep the n values with the smallest random keys.

Memory is 8 bytes per kept value (value + key), whatever the stream length. Keys come from a generator
the caller seeds per batch, so the same batches give the same sample in any process layout: two
reservoirs over disjoint parts of a stream merge into exactly the reservoir of the whole stream.
"""

from __future__ import annotations

import torch

__all__ = ["Reservoir"]


class Reservoir:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.values = torch.empty(0)
        self.keys = torch.empty(0)
        self.seen = 0

    def add(self, values: torch.Tensor, generator: torch.Generator) -> None:
        """Offer every entry of `values` (any shape; flattened, kept as float32 on the CPU)."""
        flat = values.detach().reshape(-1).float().cpu()
        keys = torch.rand(flat.numel(), generator=generator)
        self.seen += flat.numel()
        if self.values.numel() >= self.capacity:  # full: only keys below the current largest can enter
            keep = keys < self.keys.max()
            flat, keys = flat[keep], keys[keep]
        self._merge(flat, keys)

    def merge(self, other: "Reservoir") -> None:
        """Fold in a reservoir over another part of the stream."""
        self.seen += other.seen
        self._merge(other.values, other.keys)

    def _merge(self, values: torch.Tensor, keys: torch.Tensor) -> None:
        values, keys = torch.cat([self.values, values]), torch.cat([self.keys, keys])
        if keys.numel() > self.capacity:
            idx = keys.topk(self.capacity, largest=False, sorted=False).indices
            values, keys = values[idx], keys[idx]
        self.values, self.keys = values, keys

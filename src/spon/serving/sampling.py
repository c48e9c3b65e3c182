"""Which token comes next: the largest logit (greedy, the default), or a draw with temperature, top-k and top-p.

Pure maths on one vocabulary of logits; the decoding loop (`greedy.greedy_generate`) takes the picker. The draw uses
its own seeded CPU generator, so a seed gives the same tokens on any device and whatever else used torch's global one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from spon.config import opt
from spon.errors import SponError

__all__ = ["Sampling", "sample_token", "nucleus_mask"]


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which entries of a probability vector the nucleus keeps: the most probable ones, largest first, up to and including
    the first at which their total reaches `top_p` (so at least one). Ties keep their order in the vocabulary."""
    order = probs.argsort(descending=True, stable=True)
    sorted_p = probs[order]
    before = sorted_p.cumsum(0) - sorted_p  # probability of the more likely entries
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[before < top_p]] = True
    keep[order[0]] = True
    return keep


def sample_token(logits: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> int:
    """One draw from softmax(logits / temperature), restricted to the `top_k` largest logits (0: all) and then to the
    nucleus of mass `top_p` (1: all)."""
    v = logits.detach().reshape(-1).float().cpu() / temperature
    if 0 < top_k < v.numel():
        v = v.masked_fill(v < v.topk(top_k).values[-1], float("-inf"))
    probs = torch.softmax(v, 0)
    if top_p < 1.0:
        probs = probs * nucleus_mask(probs, top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Sampling:
    """How `spon generate` picks tokens; temperature 0 is greedy (the default) and ignores the rest."""

    temperature: float = opt(0.0, "0: greedy (the default); above 0: sample from the softmax of logits / temperature")
    top_p: float = opt(1.0, "sampling: keep the most likely tokens up to this total probability (1: all)")
    top_k: int = opt(0, "sampling: keep the k most likely tokens (0: all)")
    seed: int = opt(0, "sampling: the seed of the draws (same seed, same tokens)")

    def __post_init__(self):
        if not self.temperature >= 0:
            raise SponError(f"--temperature {self.temperature}: give 0 (greedy) or a positive temperature, e.g. 0.7")
        if not 0 < self.top_p <= 1:
            raise SponError(f"--top-p {self.top_p}: give a probability in (0, 1], e.g. 0.9")
        if self.top_k < 0:
            raise SponError(f"--top-k {self.top_k}: give 0 (no limit) or a positive count, e.g. 50")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def picker(self) -> Callable[[torch.Tensor], int] | None:
        """A function from one vocabulary of logits to the next token, with a fresh generator; None for greedy."""
        if self.greedy:
            return None
        g = torch.Generator().manual_seed(self.seed)
        return lambda logits: sample_token(logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                           generator=g)

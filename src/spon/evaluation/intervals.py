"""Error bars: a paired bootstrap over evaluation windows, as pure maths.

Every variant (dense, sparse, sparse+SPON) is scored on the same windows; each bootstrap sample draws windows
with replacement once and scores every variant on that same draw, so the interval of a difference (and of the
share of the gap recovered) reflects only how the variants differ window by window, not which text was drawn.
"""

from __future__ import annotations

import math

import torch

__all__ = ["paired_bootstrap", "paired_ratio", "BOOTSTRAP_SAMPLES"]

BOOTSTRAP_SAMPLES = 2000  # resamples: the 2.5% / 97.5% percentiles move by well under their own width at this count


def _interval(values: torch.Tensor, level: float) -> list[float]:
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return [math.nan, math.nan]
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=values.dtype)
    lo, hi = torch.quantile(values, q).tolist()
    return [lo, hi]


def _draw(n: int, samples: int, seed: int) -> torch.Tensor:
    """[samples, n] window indices drawn with replacement: one draw shared by every variant (paired)."""
    return torch.randint(n, (samples, n), generator=torch.Generator().manual_seed(seed))


def paired_bootstrap(nll: dict[str, torch.Tensor], tokens: torch.Tensor, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                     level: float = 0.95) -> dict[str, list[float]]:
    """95% intervals of each variant's perplexity and, given "dense", "sparse" and "spon", of the gap recovered.

    nll: variant -> summed negative log-likelihood per window [W]; tokens: scored tokens per window [W] (the same
    windows for every variant). Returns {"ppl_<variant>": [lo, hi], "gap_recovered": [lo, hi]}.
    """
    idx = _draw(tokens.numel(), samples, seed)
    counts = tokens.double()[idx].sum(1)
    ppl = {k: torch.exp(v.double()[idx].sum(1) / counts) for k, v in nll.items()}
    out = {f"ppl_{k}": _interval(v, level) for k, v in ppl.items()}
    if {"dense", "sparse", "spon"} <= set(ppl):
        gap = ppl["sparse"] - ppl["dense"]
        out["gap_recovered"] = _interval(torch.where(gap > 0, (ppl["sparse"] - ppl["spon"]) / gap, torch.nan), level)
    return out


def paired_ratio(nll_a: torch.Tensor, nll_b: torch.Tensor, tokens: torch.Tensor, *, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0, level: float = 0.95) -> tuple[float, list[float]]:
    """ppl(a) / ppl(b) on the same windows, and its 95% interval from one paired draw: below 1 means a is better.

    Two models scored on the same text share its hard and easy windows, so their perplexities' own intervals overlap
    even where one is lower on nearly every window; the ratio's interval holds only how they differ window by window.
    """
    counts = tokens.double()
    ratio = math.exp((nll_a.double().sum() - nll_b.double().sum()).item() / counts.sum().item())
    idx = _draw(tokens.numel(), samples, seed)
    draws = torch.exp((nll_a.double()[idx].sum(1) - nll_b.double()[idx].sum(1)) / counts[idx].sum(1))
    return ratio, _interval(draws, level)

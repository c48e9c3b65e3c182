"""Threshold calibration: run the dense model on calibration tokens and set each layer's tau."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .config import SparsityConfig
from .hooks import collect_inputs
from .sparsify import dense, sparse_modules
from .threshold import sample_abs, sparsified_positions, threshold_from_samples

__all__ = ["calibrate_", "SAMPLES_PER_LAYER"]

SAMPLES_PER_LAYER = 262144  # |x| values kept per layer: quantile error ~ sqrt(s(1-s)/n) < 1e-3, 1 MiB each


@torch.no_grad()
def calibrate_(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    config: SparsityConfig,
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Set every `SparseLinear` threshold so that `config.sparsity_for(name)` of its inputs fall below it.

    Inputs are those of the dense model (TEAL's protocol) on the tokens that `config.tokens` sparsifies
    during evaluation (all positions for "decode" and "all", the last fraction for "last").
    batches: iterable of input_ids [B, T]. Returns the thresholds by module name.
    """
    mods = sparse_modules(model)
    batches = list(batches)
    per_call = max(1, SAMPLES_PER_LAYER // max(1, len(batches)))
    gen = torch.Generator().manual_seed(seed)
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in mods}
    tokens = "all" if config.tokens == "decode" else config.tokens

    def record(name, mod, x):  # x: [B, T, D]
        pos = sparsified_positions(x.shape[-2], tokens, config.last_fraction)
        samples[name].append(sample_abs(x[..., pos, :], per_call, gen))

    with dense(model):
        collect_inputs(model, batches, record, desc="calibrating thresholds", progress=progress)
    taus = {}
    for name, mod in mods.items():
        tau = threshold_from_samples(torch.cat(samples[name]), config.sparsity_for(name))
        mod.threshold.fill_(float(tau))
        taus[name] = float(tau)
    model.spon_config = config
    return taus

"""Threshold calibration: run the dense model on calibration tokens and set each layer's tau.

Streaming: each layer keeps a fixed-size uniform sample of its |x| (a `Reservoir`), so memory does not grow
with the number of calibration tokens: 8 bytes x SAMPLES_PER_LAYER per layer (2 MiB; 440 MiB for the 210
linears of SmolLM2-135M), plus one batch's activations. Under torch.distributed each process takes every
world_size-th batch and the reservoirs are merged: the thresholds equal those of one process.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from . import distributed as dd
from .config import SparsityConfig
from .hooks import collect_inputs
from .reservoir import Reservoir
from .sparse_activation import SparseActivation
from .sparsify import dense, sparse_activations, sparse_modules
from .threshold import sparsified_positions, threshold_from_samples

__all__ = ["calibrate_", "SAMPLES_PER_LAYER"]

SAMPLES_PER_LAYER = 262144  # |x| values kept per layer: quantile error ~ sqrt(s(1-s)/n) < 1e-3


def _batch_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


@torch.no_grad()
def calibrate_(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    config: SparsityConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    samples_per_layer: int = SAMPLES_PER_LAYER,
) -> dict[str, float]:
    """Set every `SparseLinear` threshold so that `config.sparsity_for(name)` of its inputs fall below it.

    Inputs are those of the dense model (TEAL's protocol) on the tokens that `config.tokens` sparsifies
    during evaluation (all positions for "decode" and "all", the last fraction for "last").
    batches: iterable of input_ids [B, T], consumed once, lazily. Returns the thresholds by module name.
    """
    # the modules whose threshold is calibrated: every SparseLinear (on its selection score), or for CATS the
    # MLP activations; top-k selection needs no threshold
    if config.rule == "cats":
        mods = {n: a for n, a in sparse_activations(model).items() if a.keep is None}
    else:
        mods = {n: m for n, m in sparse_modules(model).items() if m.keep is None}
    reservoirs = {name: Reservoir(samples_per_layer) for name in mods}
    gen = torch.Generator()
    tokens = "all" if config.tokens == "decode" else config.tokens
    world, me = dd.world_size(), dd.rank()

    def mine():
        for i, ids in enumerate(batches):
            if i % world == me:
                gen.manual_seed(_batch_seed(seed, i))  # the keys of batch i do not depend on the process layout
                yield ids

    def record(name, mod, x):  # x: [B, T, D]
        pos = sparsified_positions(x.shape[-2], tokens, config.last_fraction)
        x = x[..., pos, :]
        reservoirs[name].add(mod.act(x).abs() if isinstance(mod, SparseActivation) else mod.scores(x), gen)

    with dense(model):
        collect_inputs(model, mine(), record, desc="calibrating thresholds", progress=progress and dd.is_main(), modules=mods)
    taus = {}
    for name, mod in mods.items():
        res = reservoirs[name]
        if world > 1:
            merged = Reservoir(samples_per_layer)
            for values, keys in zip(dd.all_gather_variable(res.values), dd.all_gather_variable(res.keys)):
                merged._merge(values, keys)
            res = merged
        tau = threshold_from_samples(res.values, config.sparsity_for(name))
        mod.threshold.fill_(float(tau))
        taus[name] = float(tau)
    model.spon_config = config
    return taus

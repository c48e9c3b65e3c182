"""Threshold calibration: run the dense model on calibration tokens and set each layer's tau.

Streaming: each layer keeps a fixed-size uniform sample of its |x| (a `Reservoir`), so memory does not grow
with the number of calibration tokens: 8 bytes x SAMPLES_PER_LAYER per layer (2 MiB; 420 MiB for the 210
linears of SmolLM2-135M), plus one batch's activations. Under torch.distributed each process takes every
world_size-th batch and the reservoirs are merged: the thresholds equal those of one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from spon import distributed as dd
from spon.config import SparsityConfig
from spon.errors import SponError
from spon.sparsity.experts import expert_shares
from spon.sparsity.hooks import collect_inputs
from spon.sparsity.reservoir import Reservoir
from spon.sparsity.sparse_activation import SparseActivation
from spon.sparsity.sparsify import dense, sparse_activations, sparse_modules
from spon.sparsity.selection import sparsified_positions, threshold_from_samples

__all__ = ["calibrate_", "sample_scores", "SAMPLES_PER_LAYER"]

SAMPLES_PER_LAYER = 262144  # |x| values kept per layer: quantile error ~ sqrt(s(1-s)/n) < 1e-3
MIN_EXPERT_SAMPLES = 16384  # an expert layer's floor: quantile error ~ sqrt(s(1-s)/n) < 4e-3


def _batch_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def _capacities(model: nn.Module, mods: dict, samples_per_layer: int) -> dict[str, int]:
    """Each layer's reservoir size: `samples_per_layer`, or for a mixture of experts' expert layer its k/E share of it
    (at least MIN_EXPERT_SAMPLES): an expert sees that share of the tokens, and a model with thousands of expert layers
    (Qwen3-30B-A3B: 12,288) would otherwise keep up to 2 MiB each, ~24 GiB, where this keeps what k dense layers keep."""
    shares = expert_shares(model)
    return {n: min(samples_per_layer, max(MIN_EXPERT_SAMPLES, round(samples_per_layer * shares.get(n, 1.0)))) for n in mods}


@torch.no_grad()
def sample_scores(
    model: nn.Module, batches: Iterable[torch.Tensor], config: SparsityConfig, mods: dict[str, nn.Module], *,
    seed: int = 0, samples_per_layer: int = SAMPLES_PER_LAYER, progress: bool = True, desc: str = "calibrating thresholds",
    dense_inputs: bool = True,
) -> dict[str, Reservoir]:
    """A uniform sample of each module's selection scores on the dense model's inputs (dense_inputs=False: on the
    inputs the sparsified model itself feeds each layer, vectors included), by module name.

    Scores: `SparseLinear.scores` (|x|, or WINA's), or |act(x)| for a CATS `SparseActivation`; only on the
    positions `config.tokens` sparsifies. Keys are seeded per batch index; under torch.distributed each
    process takes every world_size-th batch and the samples are merged, equal to one process's.
    """
    capacity = _capacities(model, mods, samples_per_layer)
    reservoirs = {name: Reservoir(capacity[name]) for name in mods}
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

    total = len(range(me, len(batches), world)) if hasattr(batches, "__len__") else None  # this process's batches
    with dense(model) if dense_inputs else contextlib.nullcontext():
        collect_inputs(model, mine(), record, desc=desc, progress=progress and dd.is_main(), modules=mods, total=total)
    if world > 1:
        for name, res in reservoirs.items():
            merged = Reservoir(capacity[name])
            for values, keys in zip(dd.all_gather_variable(res.values), dd.all_gather_variable(res.keys)):
                merged._merge(values, keys)
            reservoirs[name] = merged
    return reservoirs


@torch.no_grad()
def calibrate_(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    config: SparsityConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    samples_per_layer: int = SAMPLES_PER_LAYER,
    inputs: str = "dense",
    passes: int = 2,
) -> dict[str, float]:
    """Set every `SparseLinear` threshold so that `config.sparsity_for(name)` of its inputs fall below it.

    inputs: "dense", those of the dense model (TEAL's protocol), or "own", those the sparsified model feeds each
    layer at inference (its thresholds and SPON vectors applied): SPON restores activations, so more entries pass
    thresholds set on dense inputs and the deployed model runs less sparse than the target; "own" recalibrates a
    sparsified model so it runs at the target. Each layer's inputs depend on the thresholds before it, so "own"
    repeats the pass `passes` times (batches must then be a list). On the tokens that `config.tokens` sparsifies
    during evaluation (all positions for "decode" and "all", the last fraction for "last").
    batches: iterable of input_ids [B, T], consumed lazily. Returns the thresholds by module name.
    """
    if inputs not in ("dense", "own"):
        raise SponError(f"calibration inputs {inputs!r}: use 'dense' or 'own'")
    # the modules whose threshold is calibrated: every SparseLinear (on its selection score), or for CATS the
    # MLP activations; top-k selection keeps a count per token and needs no threshold
    if config.selection == "topk":
        mods: dict[str, nn.Module] = {}
    elif config.rule == "cats":
        mods = dict(sparse_activations(model))
    else:
        mods = dict(sparse_modules(model))
    taus = {}
    for _ in range(1 if inputs == "dense" else passes):
        reservoirs = sample_scores(model, batches, config, mods, seed=seed, samples_per_layer=samples_per_layer,
                                   progress=progress, dense_inputs=inputs == "dense")
        for name, mod in mods.items():
            tau = threshold_from_samples(reservoirs[name].values, config.sparsity_for(name))
            mod.threshold.fill_(float(tau))
            taus[name] = float(tau)
    model.spon_config = config
    return taus

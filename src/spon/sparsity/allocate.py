"""TEAL's block-wise greedy allocation: per-projection sparsities with the target's parameter-weighted
average, chosen to keep each decoder block's output close to the dense one.

For each block, from all-dense, repeatedly raise one projection's sparsity by a step scaled by its size
(so the block's parameter-weighted average rises by the same amount whichever is chosen), keeping the
move that least increases the block's relative output error on calibration activations; stop at the
target average. Weights come from the module shapes (out x in) times the share of tokens that reach the module (a
mixture of experts' expert: about k/E; an expert no calibration token reached gets the target), thresholds from the
same streamed samples of the dense inputs as `calibrate_`. The result is written into the config as exact per-module
overrides, so artifacts carry it. A module the user's overrides name keeps its sparsity (pinned); the others of its
block are allocated to the target around it (the output head with `sparsify_head` is a block of its own).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from spon.config import SparsityConfig
from spon.sparsity.calibrate import SAMPLES_PER_LAYER, sample_scores
from spon.sparsity.sparsify import dense, sparse_modules
from spon.sparsity.selection import order_statistic

__all__ = ["greedy_allocate_", "block_of"]

MAX_LAYER_SPARSITY = 0.99


def _usage(reservoirs: dict, mods: dict) -> dict[str, float]:
    """The share of the calibration tokens that reached each layer (input rows seen, over the most any layer saw): 1
    throughout a dense block; about k/E for a mixture of experts' expert layers."""
    rows = {n: r.seen / mods[n].in_features for n, r in reservoirs.items()}
    most = max(rows.values(), default=0.0)
    return {n: r / most if most else 1.0 for n, r in rows.items()}


def block_of(name: str) -> str | None:
    """'model.layers.3.mlp.down_proj' -> 'model.layers.3' (the first numbered component)."""
    m = re.match(r"^(.*?\.\d+)\.", name)
    return m.group(1) if m else None


def _tau(sorted_samples: torch.Tensor, sparsity: float) -> float:
    """`threshold_from_samples` on samples sorted once (the greedy search asks for many sparsities)."""
    k = order_statistic(sorted_samples.numel(), sparsity)
    return -1.0 if k is None else float(sorted_samples[k - 1])


@torch.no_grad()
def greedy_allocate_(
    model: nn.Module, batches: Iterable[torch.Tensor], config: SparsityConfig, *, step: float = 0.02, seed: int = 0,
    samples_per_layer: int = SAMPLES_PER_LAYER, progress: bool = True,
) -> SparsityConfig:
    """Allocate and calibrate in place; returns the config with per-module overrides (also model.spon_config).

    batches: input_ids [B, T]; all feed the threshold samples, the first sequence the block output errors.
    step: how much one move raises a block's parameter-weighted average sparsity.
    """
    mods = sparse_modules(model)
    batches = list(batches)
    reservoirs = sample_scores(model, batches, config, mods, seed=seed, samples_per_layer=samples_per_layer,
                               progress=progress, desc="allocation: input samples")
    samples = {n: r.values.sort().values for n, r in reservoirs.items()}
    usage = _usage(reservoirs, mods)

    groups: dict[str, list[str]] = {}
    for n in mods:
        groups.setdefault(block_of(n) or n, []).append(n)
    captured: dict[str, tuple] = {}
    handles = []
    for block in groups:
        sub = model.get_submodule(block)

        def pre(m, args, kwargs, block=block):
            captured[block] = (args, dict(kwargs))

        def post(m, args, kwargs, out, block=block):
            captured[block] = (*captured[block], out[0] if isinstance(out, tuple) else out)

        handles += [sub.register_forward_pre_hook(pre, with_kwargs=True), sub.register_forward_hook(post, with_kwargs=True)]
    device = next(model.parameters()).device
    try:
        with dense(model):
            model(input_ids=batches[0][:1].to(device), use_cache=False)  # one sequence scores the moves
    finally:
        for h in handles:
            h.remove()

    pinned = {n: v for n in mods if (v := config.override_for(n)) is not None}
    chosen: dict[str, float] = dict(pinned)
    for block, names in tqdm(groups.items(), desc="allocation: blocks", disable=not progress):
        unreached = [n for n in names if n not in pinned and usage[n] == 0.0]  # experts no calibration token picked
        chosen.update({n: config.sparsity_for(n) for n in unreached})
        free = [n for n in names if n not in pinned and n not in unreached]
        if not free:
            continue
        args, kwargs, ref = captured[block]
        sub = model.get_submodule(block)
        size = {n: usage[n] * mods[n].out_features * mods[n].in_features for n in free}  # weights read per token
        total = sum(size.values())

        def error(levels: dict[str, float]) -> float:
            for n in names:
                mods[n].threshold.fill_(_tau(samples[n], levels[n]))
            out = sub(*args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            return float((out.float() - ref.float()).pow(2).sum() / ref.float().pow(2).sum().clamp_min(1e-30))

        levels, avg = {n: chosen.get(n, 0.0) for n in names}, 0.0  # pinned and unreached as chosen, the rest dense
        target = config.sparsity
        while avg < target - 1e-9:
            inc = min(step, target - avg)
            best = None
            for n in free:
                ds = inc * total / size[n]
                if levels[n] + ds > MAX_LAYER_SPARSITY:
                    continue
                e = error({**levels, n: levels[n] + ds})
                if best is None or e < best[0]:
                    best = (e, n, ds)
            if best is None:
                break  # every projection is at its limit
            levels[best[1]] += best[2]
            avg += inc
        chosen.update({n: levels[n] for n in free})
    for n, m in mods.items():
        m.threshold.fill_(_tau(samples[n], chosen[n]))
    overrides = {f"^{re.escape(n)}$": round(min(s, MAX_LAYER_SPARSITY), 6) for n, s in chosen.items()}
    new = SparsityConfig.from_dict({**config.to_dict(), "overrides": overrides})
    model.spon_config = new
    return new

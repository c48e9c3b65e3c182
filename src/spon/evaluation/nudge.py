"""The rounding floor of a thresholded model: how far its scores move when every threshold moves by a rounding-sized
amount.

Two CPUs calibrate the same seed to thresholds a few parts in a million apart (their kernels round the activations
differently; the sample is the same), and a hard threshold turns that into flips of whole entries that every later
layer feels: on SmolLM2 at 50%, nudges of 1e-6 moved the gap recovered by up to 4 points (`docs/RESULTS.md`,
"Rounding floor"). The window bootstrap resamples text, not this; `rounding_floor` measures it on the same windows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from spon.evaluation.evaluate import spread
from spon.sparsity.sparsify import sparse_activations, sparse_modules

__all__ = ["scaled_thresholds", "nudged_thresholds", "jittered_thresholds", "rounding_floor", "describe_floor", "NUDGE_EPS"]

NUDGE_EPS = 1e-6  # the median relative difference between two kernel sets' thresholds (docs/RESULTS.md)


def _thresholded(model: nn.Module) -> list[nn.Module]:
    return [*sparse_modules(model).values(), *sparse_activations(model).values()]


@contextlib.contextmanager
def scaled_thresholds(model: nn.Module, factors: torch.Tensor) -> Iterator[nn.Module]:
    """Inside this block threshold i (in `sparse_modules` then `sparse_activations` order) is multiplied by factors[i];
    each one's own value is put back on exit."""
    mods = _thresholded(model)
    saved = [m.threshold.detach().clone() for m in mods]
    with torch.no_grad():  # in place, as `without_spon`: prepared decode steps see the change
        for m, f in zip(mods, factors.tolist(), strict=True):
            m.threshold.mul_(f)
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, t in zip(mods, saved):
                m.threshold.copy_(t)


def nudged_thresholds(model: nn.Module, eps: float, generator: torch.Generator):
    """Every threshold multiplied by 1 + eps or 1 - eps (the sign drawn per layer from `generator`), inside the block."""
    signs = torch.randint(0, 2, (len(_thresholded(model)),), generator=generator) * 2 - 1
    return scaled_thresholds(model, 1 + eps * signs)


def jittered_thresholds(model: nn.Module, sigma: float, generator: torch.Generator):
    """Every threshold multiplied by exp(sigma z), z standard normal drawn per layer from `generator`, inside the block
    (training under jitter: `TrainConfig.threshold_jitter`)."""
    z = torch.randn(len(_thresholded(model)), generator=generator, dtype=torch.float64)
    return scaled_thresholds(model, (sigma * z).exp())


def rounding_floor(score, model: nn.Module, base: dict, nudges: int, *, eps: float = NUDGE_EPS, seed: int = 0,
                   progress: bool = True) -> dict:
    """Score the model `nudges` more times with nudged thresholds; the spread of each figure over those draws and the
    unnudged one (`base`, what `score()` returned without a nudge; `evaluate.spread`, None with fewer than two finite
    values).

    score: a callable with no arguments returning a dict with ppl_sparse and, where the model has vectors, ppl_spon
    and gap_recovered (`evaluate_variants` on fixed windows). Draw d uses generator seed `seed` + d.
    """
    keys = [k for k in ("ppl_sparse", "ppl_spon", "gap_recovered") if base.get(k) is not None]
    draws = []
    for d in tqdm(range(nudges), desc="rounding floor", disable=not progress, leave=False):
        with nudged_thresholds(model, eps, torch.Generator().manual_seed(seed + d)):
            res = score()
        draws.append({k: res[k] for k in keys})
    return {"eps": eps, "nudges": nudges, "seed": seed, "draws": draws,
            **{k: spread([base[k], *(d[k] for d in draws)]) for k in keys}}


def describe_floor(floor: dict) -> str:
    """One line: the range of each figure over the unnudged score and the nudged draws."""
    spans = [f"{name} {floor[key]['min']:{spec}}-{floor[key]['max']:{spec}}" for key, name, spec in
             (("ppl_sparse", "sparse", ".3f"), ("ppl_spon", "sparse+SPON", ".3f"), ("gap_recovered", "gap recovered", ".1%"))
             if floor.get(key)]
    return (f"rounding floor (every threshold nudged by {floor['eps']:g} of its value; the unnudged score and "
            f"{floor['nudges']} nudged): " + ", ".join(spans))

"""`spon diagnose`: the paper's explanation, measured on your model (PAPER.md section 2).

- Drift: per layer, how far the residual stream of the sparse (and sparse+SPON) model is from the dense
  one on the same tokens: relative L2 error and cosine similarity per token, averaged; and the KL of
  the final next-token distribution.
- Anchors: for each linear's input, the fraction of channels active (|x| > tau) at *every* one of the
  first n tokens of a sequence, as n grows, at several sparsities (tau: that layer's quantile of |x|
  on the diagnosed tokens). Averaged over linears and sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import collect_inputs
from .kl import kl_per_token
from .sparsify import dense, sparse_modules, without_spon

__all__ = ["always_active_fraction", "hidden_drift", "anchor_curves", "diagnose"]


def always_active_fraction(active: torch.Tensor) -> torch.Tensor:
    """active: [T, D] booleans. Returns [T]: entry n-1 is the fraction of the D channels active at all of tokens 0..n-1."""
    return active.to(torch.float32).cumprod(dim=0).mean(dim=-1)


def _per_token(h: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    h, ref = h.float().reshape(-1, h.shape[-1]), ref.float().reshape(-1, ref.shape[-1])
    rel = ((h - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)).mean()
    cos = F.cosine_similarity(h, ref, dim=-1).mean()
    return float(rel), float(cos)


@torch.no_grad()
def hidden_drift(model: nn.Module, ids: torch.Tensor) -> dict:
    """Per-layer drift of sparse (and sparse+SPON) hidden states from the dense ones; ids: [B, T]."""
    device = next(model.parameters()).device
    ids = ids.to(device)

    def run():
        out = model(input_ids=ids, output_hidden_states=True)
        return out.hidden_states, out.logits

    with dense(model):
        ref_h, ref_logits = run()
    variants = {}
    with without_spon(model):
        variants["sparse"] = run()
    if any(m.has_spon for m in sparse_modules(model).values()):
        variants["sparse+SPON"] = run()
    t_logp = torch.log_softmax(ref_logits.float(), -1)
    out = {}
    for name, (hs, logits) in variants.items():
        pairs = [_per_token(h, r) for h, r in zip(hs, ref_h)]
        out[name] = {
            "rel_l2": [p[0] for p in pairs], "cosine": [p[1] for p in pairs],
            "mean_rel_l2": sum(p[0] for p in pairs[1:]) / max(1, len(pairs) - 1),  # layers after the embeddings
            "kl_final": float(kl_per_token(t_logp, logits)),
        }
    return out


@torch.no_grad()
def anchor_curves(model: nn.Module, ids: torch.Tensor, sparsities: list[float]) -> dict:
    """Always-active fraction against sequence length for each sparsity, averaged over linears and sequences."""
    curves = {s: torch.zeros(ids.shape[1]) for s in sparsities}
    count = [0]

    def record(name, mod, x):  # x: [B, T, D], dense inputs
        a = x.detach().abs().float()
        flat = a.reshape(-1)
        for s in sparsities:
            k = max(1, min(flat.numel(), int(round(s * flat.numel()))))
            tau = flat.kthvalue(k).values if s > 0 else torch.tensor(-1.0)
            for b in range(a.shape[0]):
                curves[s] += always_active_fraction(a[b] > tau)
        count[0] += a.shape[0]

    with dense(model):
        collect_inputs(model, [ids], record, desc="anchors", progress=False)
    n = max(1, count[0])
    return {"lengths": list(range(1, ids.shape[1] + 1)), "by_sparsity": {str(s): (c / n).tolist() for s, c in curves.items()}}


def diagnose(model: nn.Module, ids: torch.Tensor, sparsities: list[float]) -> dict:
    drift = hidden_drift(model, ids)
    return {
        "drift": drift,
        "mean_rel_l2": {k: v["mean_rel_l2"] for k, v in drift.items()},
        "kl_final": {k: v["kl_final"] for k, v in drift.items()},
        "anchors": anchor_curves(model, ids, sparsities),
        "sequences": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
    }

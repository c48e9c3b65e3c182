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

import json
from dataclasses import dataclass

from spon.io.atomic import ensure_writable_dir, write_text
from spon.config import opt
from spon.io.data import load_splits, sequences, tokenize
from spon.errors import SponError
from spon.io.data import bos_token_id
from spon.sparsity.hooks import collect_inputs
from spon.serving.machine import machine
from spon.sparsity.selection import threshold_from_samples
from spon.training.kl import kl_per_token
from spon.sparsity.sparsify import dense, sparse_modules, without_spon
from spon.pipeline import open_model
from spon.io.plots import plot_diagnose
from spon.io.models import ModelArgs

__all__ = ["always_active_fraction", "hidden_drift", "anchor_curves", "diagnose", "DiagnoseConfig", "run_diagnose"]


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
        for s in sparsities:
            tau = threshold_from_samples(a, s)
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


@dataclass
class DiagnoseConfig(ModelArgs):
    """`spon diagnose`: drift and always-active channels of an artifact's model on held-out text."""

    artifact: str | None = opt(None, "artifact folder (not needed for an exported model folder)", type="str")
    data: str = opt("pydoc", "text: pydoc or stdlib (embedded), wikitext2, c4, or a local file/folder")
    sequences: int = opt(2, "held-out sequences to diagnose")
    seq_len: int = opt(512, "tokens per sequence")
    sparsities: tuple[float, ...] = opt((0.25, 0.5, 0.7), "sparsities of the always-active curves", type="sparsities")
    out: str = opt("diagnose_out", "folder for diagnose.json and the plots")


def run_diagnose(cfg: DiagnoseConfig, progress: bool = True) -> str:
    """diagnose() on the held-out split; writes diagnose.json and the plots, returns the summary line."""
    out = ensure_writable_dir(cfg.out)
    splits = load_splits(cfg.data)
    lm, meta = open_model(cfg.model, cfg.dtype, cfg.artifact, cfg.device_map, check_weights=not cfg.ignore_weights,
                          trust_remote_code=cfg.trust_remote_code)
    if meta is None:
        raise SponError("nothing to diagnose: pass --artifact (from `spon calibrate`/`spon train`) or an exported model folder")
    ids = sequences(tokenize(lm.tokenizer, splits.evaluation), cfg.seq_len, bos=bos_token_id(lm.tokenizer))[: cfg.sequences]
    if len(ids) == 0:
        raise SponError(f"the evaluation text is shorter than one {cfg.seq_len}-token sequence; give more text or a smaller --seq-len")
    res = {"model": lm.identity, "data": {**splits.source, "split": "evaluation"},
           "sparsity": lm.model.spon_config.sparsity, "tokens_sparsified": lm.model.spon_config.describe_tokens(),
           **diagnose(lm.model, ids, list(cfg.sparsities)), "machine": machine()}
    res["plots"] = plot_diagnose(res, out)
    write_text(out / "diagnose.json", json.dumps(res, indent=2, default=str))
    return json.dumps({"mean_rel_l2": res["mean_rel_l2"], "kl_final": res["kl_final"]})

"""Diagnostic (not a feature): scale every SPON vector by gamma; score pydoc and stdlib held-out splits (dense/sparse once).

Usage: python scripts/alpha_scale_check.py ARTIFACT 0.5,0.75,1.0,1.25 [MODEL]
"""
import sys

import torch

from spon import load_model, load_artifact, load_splits, tokenize, sparse_modules, EvalProtocol
from spon.evaluation.evaluate import evaluate_variants, window_scores
from spon.io.data import bos_token_id
from spon.sparsity.sparsify import dense as dense_ctx
art, gammas = sys.argv[1], [float(g) for g in sys.argv[2].split(",")]
torch.manual_seed(0)
lm = load_model(sys.argv[3] if len(sys.argv) > 3 else "smollm2", "float32")
load_artifact(lm.model, art)
mods = sparse_modules(lm.model)
orig = {n: m.alpha.detach().clone() for n, m in mods.items()}
bos = bos_token_id(lm.tokenizer); proto = EvalProtocol()
for data in ("pydoc", "stdlib"):
    ids = tokenize(lm.tokenizer, load_splits(data).evaluation)
    with dense_ctx(lm.model):
        d = window_scores(lm.model, ids, proto, bos, progress=False)
    for g in gammas:
        for n, m in mods.items():
            m.alpha.data.copy_(orig[n] * g)
        r = evaluate_variants(lm.model, ids, proto, bos, progress=False, dense_scores=d)
        print(data, g, f"{r['ppl_sparse']:.3f} {r['ppl_spon']:.3f} {r['gap_recovered']:.1%} {r['ci95']['gap_recovered']}", flush=True)

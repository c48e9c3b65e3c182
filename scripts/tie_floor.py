"""Where the rounding floor comes from: inputs that sit exactly on their layer's threshold, and which layers' nudges
move the held-out figures.

Usage: python scripts/tie_floor.py MODEL ARTIFACT NUDGES OUT.json

1. Runs the sparse+SPON model over the held-out pydoc windows and counts, per sparsified linear, the input entries
   whose score equals the threshold exactly (the threshold is a calibration sample value, `threshold_from_samples`)
   and those within NUDGE_EPS of it (the entries a nudge can flip).
2. Scores NUDGES nudged draws (`nudge.rounding_floor`'s draws, same seeds) with only layer 0's thresholds nudged,
   then NUDGES with every other layer's nudged, to tell the token-determined layer-0 inputs from the rest.
"""
import json
import sys
from pathlib import Path

import torch

from spon.io.data import load_eval_text, tokenize
from spon.evaluation.evaluate import EvalProtocol, evaluate_variants, window_scores
from spon.io.data import bos_token_id
from spon.pipeline import open_model
from spon.evaluation.nudge import NUDGE_EPS, nudged_thresholds
from spon.sparsity.sparsify import dense, sparse_modules


def restore_others(model, keep, saved):
    with torch.no_grad():
        for n, m in sparse_modules(model).items():
            if n not in keep:
                m.threshold.copy_(saved[n])


def main(model: str, artifact: str, nudges: int, out: str) -> None:
    lm, _ = open_model(model, "float32", artifact)
    text, source = load_eval_text("pydoc", None)
    ids = tokenize(lm.tokenizer, text)
    bos = bos_token_id(lm.tokenizer)
    protocol = EvalProtocol()
    mods = sparse_modules(lm.model)

    counts = {n: {"entries": 0, "equal": 0, "within_eps": 0} for n in mods}

    def hook(name):
        def pre(mod, args):
            s = mod.scores(args[0]).detach()
            t = mod.threshold.detach()
            c = counts[name]
            c["entries"] += s.numel()
            c["equal"] += int((s == t).sum())
            c["within_eps"] += int(((s - t).abs() <= NUDGE_EPS * t.abs()).sum())
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    base_sparse = window_scores(lm.model, ids, protocol, bos, desc="sparse+SPON, counting ties")
    for h in handles:
        h.remove()

    with dense(lm.model):
        d = window_scores(lm.model, ids, protocol, bos, desc="dense")
    base = evaluate_variants(lm.model, ids, protocol, bos, dense_scores=d)
    keys = ("ppl_sparse", "ppl_spon", "gap_recovered")
    groups = {"layer0": {n for n in mods if ".layers.0." in n}}
    groups["rest"] = set(mods) - groups["layer0"]
    draws = {}
    for g, keep in groups.items():
        draws[g] = []
        for k in range(nudges):
            saved = {n: m.threshold.detach().clone() for n, m in mods.items()}
            with nudged_thresholds(lm.model, NUDGE_EPS, torch.Generator().manual_seed(k)):
                restore_others(lm.model, keep, saved)  # only this group's thresholds stay nudged
                res = evaluate_variants(lm.model, ids, protocol, bos, dense_scores=d, progress=False)
            draws[g].append({key: res[key] for key in keys})
            print(g, k, {key: round(res[key], 4) for key in keys}, flush=True)
    result = {
        "model": model, "artifact": artifact, "data": source, "tokens": base["tokens"], "eps": NUDGE_EPS,
        "base": {key: base[key] for key in keys}, "ppl_spon_check": base_sparse.ppl,
        "ties": counts, "draws": draws,
    }
    Path(out).write_text(json.dumps(result, indent=2))
    for n, c in counts.items():
        if c["within_eps"]:
            print(f"{n}: {c['equal']} equal, {c['within_eps']} within eps of {c['entries']}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

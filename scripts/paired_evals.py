"""Two `spon eval --out` results on the same text, compared window by window: ppl(A) / ppl(B) with its 95% interval.

Usage: python scripts/paired_evals.py A/eval.json B/eval.json
       python scripts/paired_evals.py A/sweep.json#seed=1 B/sweep.json#seed=1   (one seed's row of a sweep)

For two artifacts of one model scored on the same evaluation windows (e.g. two training settings): each variant's
marginal intervals overlap because both share the text's hard and easy windows; the paired ratio holds only how they
differ window by window (below 1: A is better). Also accepts a `spon sweep` sweep.json with one row, or any row of a sweep by its seed (`PATH#seed=N`).
"""
import json
import sys
from pathlib import Path

import torch

from spon.evaluation.intervals import paired_ratio


def windows(path: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """(tokens per window, NLL per window by variant, gap recovered) of an eval.json, a one-row sweep.json, or one
    seed's row of a sweep.json (`PATH#seed=N`)."""
    path, _, seed = path.partition("#seed=")
    d = json.loads(Path(path).read_text())
    if seed:
        rows = [r for r in d.get("rows", []) + d.get("seed_rows", []) if r.get("seed") == int(seed) and "window_nll" in r]
        if not rows:
            sys.exit(f"{path}: no row of seed {seed} with per-window scores")
        d = {**d, "rows": rows[:1]}
    if "per_window" in d:
        tokens, nll, gap = d["per_window"]["tokens"], d["per_window"]["nll"], d.get("gap_recovered")
    elif "window_tokens" in d and len(d.get("rows", [])) == 1:
        row = d["rows"][0]
        tokens, nll, gap = d["window_tokens"], {"dense": d["window_nll_dense"], **row["window_nll"]}, row["gap_recovered"]
    else:
        sys.exit(f"{path}: no per-window scores (an eval.json from `spon eval --out`, or a one-row sweep.json); rerun it")
    return torch.tensor(tokens), {k: torch.tensor(v) for k, v in nll.items()}, gap


def main(a_path: str, b_path: str) -> None:
    (ta, a, gap_a), (tb, b, gap_b) = windows(a_path), windows(b_path)
    if not torch.equal(ta, tb):
        sys.exit("the two results were not scored on the same windows (token counts differ); evaluate both on one text")
    for k in sorted(set(a) & set(b)):
        ratio, (lo, hi) = paired_ratio(a[k], b[k], ta)
        print(f"{k}: ppl(A)/ppl(B) = {ratio:.4f} [{lo:.4f}, {hi:.4f}]")
    print(f"gap recovered: A {gap_a:.1%}, B {gap_b:.1%} ({int(ta.sum())} tokens in {ta.numel()} windows)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])

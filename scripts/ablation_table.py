"""Print a Markdown table of single-point `spon sweep` runs (ablations): which option changed, and the result.

Each perplexity and gap recovered carries its 95% paired-bootstrap interval where the run recorded one
(runs from before intervals existed print the single number).

Usage: python scripts/ablation_table.py LABEL=FOLDER [LABEL=FOLDER ...]
"""

import json
import sys
from pathlib import Path

from spon.experiments.tables import with_ci


def main(args: list[str]) -> None:
    print("| run | SPON on | vectors | training sequences | sparsity | tokens | sparse | sparse+SPON | gap recovered | val KL start -> best |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for item in args:
        label, _, folder = item.partition("=")
        r = json.loads((Path(folder) / "sweep.json").read_text())
        t = r["train"]
        vectors = f"{t['neurons']} output-space neuron(s)" if t.get("neurons") else "1 input-space alpha"
        tokens = f"{r['tokens']:,}" if r.get("tokens") else "-"
        for row in r["rows"]:
            ci = row.get("ci95") or {}
            print(f"| {label} | {t['spon_on']} | {vectors} | {t['train_sequences']} | {row['sparsity']:.0%} | {tokens} | "
                  f"{with_ci(row['ppl_sparse'], ci.get('ppl_sparse'), '.3f')} | "
                  f"{with_ci(row['ppl_spon'], ci.get('ppl_spon'), '.3f')} | "
                  f"{with_ci(row['gap_recovered'], ci.get('gap_recovered'), '.1%')} | "
                  f"{row['val_kl_start']:.4f} -> {row['val_kl_best']:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])

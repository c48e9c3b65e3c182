"""Print a Markdown table of single-point `spon sweep` runs (ablations): which option changed, and the result.

Usage: python scripts/ablation_table.py LABEL=FOLDER [LABEL=FOLDER ...]
"""

import json
import sys
from pathlib import Path


def main(args: list[str]) -> None:
    print("| run | SPON on | vectors | training sequences | sparsity | sparse | sparse+SPON | gap recovered | val KL start -> best |")
    print("|---|---|---|---|---|---|---|---|---|")
    for item in args:
        label, _, folder = item.partition("=")
        r = json.loads((Path(folder) / "sweep.json").read_text())
        t = r["train"]
        vectors = f"{t['neurons']} output-space neuron(s)" if t.get("neurons") else "1 input-space alpha"
        for row in r["rows"]:
            spon = "-" if row["ppl_spon"] is None else f"{row['ppl_spon']:.3f}"
            gap = "-" if row["gap_recovered"] is None else f"{row['gap_recovered']:.1%}"
            print(f"| {label} | {t['spon_on']} | {vectors} | {t['train_sequences']} | {row['sparsity']:.0%} | {row['ppl_sparse']:.3f} | "
                  f"{spon} | {gap} | {row['val_kl_start']:.4f} -> {row['val_kl_best']:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])

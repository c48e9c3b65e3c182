"""Print the README's results table from the metrics.json files that `spon demo` wrote.

    python scripts/results_table.py demo_out gemma_out
"""

import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    r = json.loads((path / "metrics.json").read_text())
    m, t = r["metrics"], r["training"]
    spon = f"{m['ppl_spon']:.2f}" if m.get("ppl_spon") else "-"
    gap = f"{m['gap_recovered']:.1%}" if m.get("gap_recovered") is not None else "-"
    return (
        f"| {r['model']['name']} ({r['model']['architecture']}) | {r['sparsity']['sparsity']:.0%} | "
        f"{m['sparsity_measured']:.1%} | {m['ppl_dense']:.2f} | {m['ppl_sparse']:.2f} | {spon} | {gap} | "
        f"{m['tokens']} | {t['result']['steps_run']} x {t['config']['batch_size']}x{t['config']['seq_len']}, "
        f"lr {t['config']['lr']} | {r['seconds']['total']:.0f} s |"
    )


if __name__ == "__main__":
    print("| model | target | measured sparsity | dense | sparse | sparse + SPON | gap recovered | eval tokens | SPON training | demo wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        print(row(Path(arg)))

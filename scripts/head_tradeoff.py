"""Perplexity against decode speed for the output head dense or sparsified too (`--sparsify-head` / an override).

Usage: python scripts/head_tradeoff.py RESULTS_DIR
RESULTS_DIR holds, per setting NAME, `smollm2-NAME/sweep.json` (accuracy) and `bench-NAME-fp32/decode.json` (speed);
writes tradeoff.png and tradeoff.json there: sparse+SPON perplexity with its interval against sparse+SPON compiled
tokens/s over HF compiled dense, measured in the same run.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SETTINGS = {"default": "head dense", "head30": "head at 30%", "head50": "head at 50%"}


def main(root: Path) -> None:
    points = {}
    for name, label in SETTINGS.items():
        sweep = json.loads((root / f"smollm2-{name}" / "sweep.json").read_text())["rows"][0]
        run = json.loads((root / f"bench-{name}-fp32" / "decode.json").read_text())["runs"]["float32"]
        points[label] = {"ppl_spon": sweep["ppl_spon"], "ci95": sweep["ci95"]["ppl_spon"],
                         "speedup_vs_hf_compiled": run["speedup_vs_dense_compiled"]["sparse+SPON_compiled"],
                         "byte_bound": run["byte_bound"]["sparse+SPON"]}
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, p in points.items():
        lo, hi = p["ci95"]
        ax.errorbar(p["speedup_vs_hf_compiled"], p["ppl_spon"], yerr=[[p["ppl_spon"] - lo], [hi - p["ppl_spon"]]], fmt="o", capsize=3)
        ax.annotate(f"{label} (bound {p['byte_bound']:.2f}x)", (p["speedup_vs_hf_compiled"], p["ppl_spon"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("sparse+SPON compiled tok/s / HF compiled dense")
    ax.set_ylabel("sparse+SPON perplexity (95% interval)")
    ax.set_title("SmolLM2-135M, decoder linears at 50%, float32", fontsize=9)
    fig.tight_layout()
    fig.savefig(root / "tradeoff.png", dpi=120)
    (root / "tradeoff.json").write_text(json.dumps(points, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

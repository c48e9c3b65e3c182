"""PNG plots of sweep results (matplotlib, no display needed). Each function returns the file names written."""

from __future__ import annotations

import re
from pathlib import Path

from spon.io.atomic import atomic_file

__all__ = ["layer_and_kind", "plot_sweep", "plot_gemv", "plot_decode", "plot_diagnose", "plot_compare"]


def layer_and_kind(name: str) -> tuple[int, str]:
    """(block index, projection name) of a module name: 'model.layers.3.mlp.down_proj' -> (3, 'mlp.down_proj')."""
    m = re.search(r"\.(\d+)\.(.+)$", name)
    if not m:
        return -1, name
    kind = m.group(2).split(".")
    return int(m.group(1)), ".".join(kind[-2:])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _yerr(rows: list[dict], key: str, scale: float = 1.0):
    """Asymmetric error bars [[below...], [above...]] from each row's 95% interval ci95[key], or None if any lacks one."""
    cis = [(x.get("ci95") or {}).get(key) for x in rows]
    if not rows or any(ci is None or x.get(key) is None for ci, x in zip(cis, rows)):
        return None
    return [[(x[key] - ci[0]) * scale for ci, x in zip(cis, rows)], [(ci[1] - x[key]) * scale for ci, x in zip(cis, rows)]]


def plot_sweep(r: dict, out: Path) -> list[str]:
    """perplexity.png, gap_recovered.png and spon_norms.png for a sweep report."""
    plt = _plt()
    rows = sorted(r["rows"], key=lambda x: x["sparsity"])
    s = [x["sparsity"] * 100 for x in rows]
    names = []

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(r["ppl_dense"], color="k", ls="--", label=f"dense ({r['ppl_dense']:.2f})")
    ax.errorbar(s, [x["ppl_sparse"] for x in rows], yerr=_yerr(rows, "ppl_sparse"), fmt="o-", capsize=3, label="sparse")
    spon = [(a, x) for a, x in zip(s, rows) if x["ppl_spon"]]
    ax.errorbar([a for a, _ in spon], [x["ppl_spon"] for _, x in spon], yerr=_yerr([x for _, x in spon], "ppl_spon"),
                fmt="s-", capsize=3, label="sparse + SPON")
    if r.get("iso_reference_ppl"):
        ax.axhline(r["iso_reference_ppl"], color="gray", lw=0.8)
        if r.get("iso_sparsity") is not None:
            ax.axvline(r["iso_sparsity"] * 100, color="gray", ls=":", label=f"iso-perplexity sparsity {r['iso_sparsity']:.1%}")
    ax.set_yscale("log")
    ax.set_xlabel("target sparsity (%)")
    ax.set_ylabel("held-out perplexity (log scale)")
    ax.set_title(r["model"]["name"])
    ax.legend()
    _save(fig, out / "perplexity.png")
    plt.close(fig)
    names.append("perplexity.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    g = [(a, x["gap_recovered"] * 100, x) for a, x in zip(s, rows) if x["gap_recovered"] is not None]
    gap_err = _yerr([x for _, _, x in g], "gap_recovered", 100)
    ax.errorbar([a for a, _, _ in g], [b for _, b, _ in g], yerr=gap_err, fmt="o-", capsize=3)
    ax.set_title(f"{r['model']['name']} (bars: 95% paired-bootstrap intervals)" if gap_err else r["model"]["name"])
    ax.set_xlabel("target sparsity (%)")
    ax.set_ylabel("perplexity gap recovered by SPON (%)")
    ax.set_ylim(min(0, *[b - 10 for _, b, _ in g]) if g else 0, 100)
    ax.grid(alpha=0.3)
    _save(fig, out / "gap_recovered.png")
    plt.close(fig)
    names.append("gap_recovered.png")

    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.5), sharey=True, squeeze=False)
    for ax, row in zip(axes[0], rows):
        by_kind: dict[str, list[tuple[int, float]]] = {}
        for name, norm in row["spon_norms"].items():
            layer, kind = layer_and_kind(name)
            by_kind.setdefault(kind, []).append((layer, norm))
        for kind, pts in sorted(by_kind.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ".-", label=kind)
        ax.set_title(f"{row['sparsity']:.0%} sparsity")
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("||W alpha||")
    axes[0][-1].legend(fontsize=7)
    _save(fig, out / "spon_norms.png")
    plt.close(fig)
    names.append("spon_norms.png")
    return names


def plot_gemv(r: dict, out: Path) -> list[str]:
    """gemv.png: kernel speed-up over dense F.linear and over itself at 0%, against sparsity, per shape and dtype."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    groups: dict[str, list[dict]] = {}
    for row in r["rows"]:
        groups.setdefault(f"{row['out']}x{row['in']} {row['dtype']}", []).append(row)
    for label, rows in sorted(groups.items()):
        rows.sort(key=lambda x: x["sparsity"])
        s = [x["sparsity"] * 100 for x in rows]
        # a float row against dense F.linear; a quantized row against the float32 kernel at 0% (dashed)
        against = [x.get("speedup_vs_dense", x.get("speedup_vs_float32_kernel_0pct")) for x in rows]
        axes[0].plot(s, against, "o-" if "speedup_vs_dense" in rows[0] else "s--", label=label)
        axes[1].plot(s, [x["speedup_vs_kernel_0pct"] for x in rows], "o-", label=label)
    axes[0].set_ylabel("speed-up over dense F.linear (quantized, dashed: over the float32 kernel at 0%)")
    axes[1].set_ylabel("speed-up over the same kernel at 0%")
    for ax in axes:
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"sparse GEMV, batch 1, {r['threads']} threads; read bandwidth {r['bandwidth_gbs']['median']:.1f} GB/s")
    _save(fig, out / "gemv.png")
    plt.close(fig)
    return ["gemv.png"]


def plot_decode(r: dict, out: Path) -> list[str]:
    """decode.png: tokens/s of each decode variant, per dtype."""
    plt = _plt()
    runs = r["runs"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    variants = list(next(iter(runs.values()))["tokens_per_s"])
    width = 0.8 / max(1, len(runs))
    for j, (dtype, run) in enumerate(runs.items()):
        xs = [i + j * width for i in range(len(variants))]
        ax.bar(xs, [run["tokens_per_s"][v] for v in variants], width, label=dtype)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(variants))])
    ax.set_xticklabels(variants, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("tokens / s (batch 1, greedy)")
    ax.set_title(f"{r['model']['name']} at {r['sparsity']:.0%} sparsity")
    ax.legend()
    _save(fig, out / "decode.png")
    plt.close(fig)
    return ["decode.png"]


def plot_diagnose(r: dict, out: Path) -> list[str]:
    """drift.png (per-layer relative L2 and cosine to dense) and always_active.png (anchors vs sequence length)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, d in r["drift"].items():
        layers = list(range(len(d["rel_l2"])))
        axes[0].plot(layers, d["rel_l2"], ".-", label=f"{name} (mean {d['mean_rel_l2']:.3f}, KL {d['kl_final']:.3f})")
        axes[1].plot(layers, d["cosine"], ".-", label=name)
    axes[0].set_ylabel("||h - h_dense|| / ||h_dense||")
    axes[1].set_ylabel("cosine(h, h_dense)")
    for ax in axes:
        ax.set_xlabel("hidden state (0 = embeddings)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{r['model']['name']}: drift from the dense residual stream")
    _save(fig, out / "drift.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    a = r["anchors"]
    for s, curve in a["by_sparsity"].items():
        ax.plot(a["lengths"], [c * 100 for c in curve], label=f"{float(s):.0%} sparsity")
    ax.set_xscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("input channels active at every token (%)")
    ax.set_title(f"{r['model']['name']}: always-active channels")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out / "always_active.png")
    plt.close(fig)
    return ["drift.png", "always_active.png"]


def plot_compare(r: dict, out: Path) -> list[str]:
    """compare.png: held-out perplexity of each method, sparse and sparse+SPON, against dense."""
    plt = _plt()
    rows = r["rows"]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [x["ppl_sparse"] for x in rows], 0.4, yerr=_yerr(rows, "ppl_sparse"), capsize=3, label="sparse")
    spon = [x if x["ppl_spon"] else {**x, "ppl_spon": 0, "ci95": {}} for x in rows]
    ax.bar([x + 0.2 for x in xs], [x["ppl_spon"] for x in spon], 0.4, yerr=_yerr(spon, "ppl_spon"), capsize=3, label="sparse + SPON")
    for i, x in enumerate(rows):  # the paired figure: share of this method's own gap that SPON recovers
        if x.get("gap_recovered") is not None:
            ci = (x.get("ci95") or {}).get("gap_recovered")
            label = f"{x['gap_recovered']:.0%}" + (f"\n[{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "")
            top = ((x.get("ci95") or {}).get("ppl_spon") or [0, x["ppl_spon"]])[1]
            ax.annotate(label, (i + 0.2, top), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=6)
    ax.axhline(r["ppl_dense"], color="k", ls="--", label=f"dense ({r['ppl_dense']:.2f})")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([x["method"] for x in rows])
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"{r['model']['name']} at {r['sparsity']:.0%} sparsity")
    top = max(max(x["ppl_sparse"], ((x.get("ci95") or {}).get("ppl_sparse") or [0, 0])[1]) for x in rows)
    ax.set_ylim(0, top * 1.3)  # headroom: the legend sits above the bars
    ax.legend(loc="upper center", ncol=3, fontsize=8)
    _save(fig, out / "compare.png")
    plt.close(fig)
    return ["compare.png"]

"""`spon compare`: each peer's rule, with and without SPON, at the same sparsity on the same data; table + plot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from spon.io.atomic import ensure_writable_dir, write_text
from spon.evaluation.intervals import paired_ratio
from spon.config import SparsityConfig, opt
from spon.errors import SponError
from spon.io.plots import plot_compare
from spon.experiments.runner import ExperimentConfig, header, run_points, window_nll
from spon.experiments.tables import with_ci

__all__ = ["compare", "METHODS", "CompareConfig", "run_compare", "render_compare"]

METHODS = {  # name -> the SparsityConfig fields that make it
    "teal": {"rule": "magnitude"},
    "teal-greedy": {"rule": "magnitude", "allocation": "greedy"},
    "wina": {"rule": "wina"},
    "cats": {"rule": "cats"},
    "rsparse": {"rule": "rsparse"},
    "topk": {"rule": "magnitude", "selection": "topk"},
}


@dataclass
class CompareConfig(ExperimentConfig):
    """`spon compare`: each method calibrated, evaluated sparse, trained and evaluated again, on the same data."""

    out: str = opt("compare_out", "output folder")
    methods: tuple[str, ...] = opt(tuple(METHODS), "comma-separated methods", type="methods")
    spon: bool = opt(True, "train SPON on every method (--no-spon: plain sparsity only)")

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise SponError(f"unknown method(s) {', '.join(bad) or '(none)'}; use some of {', '.join(METHODS)}")


def run_compare(cfg: CompareConfig, progress: bool = True) -> dict:
    """One row per method: sparse and sparse+SPON perplexity, gap recovered, measured sparsity; JSON, Markdown, plot."""
    out = ensure_writable_dir(cfg.out)
    report: dict = {}
    points = {name: SparsityConfig.from_dict({**cfg.sparsity.to_dict(), **METHODS[name]}) for name in cfg.methods}

    def add(session, name, p):
        if not report:
            report.update(header(session, cfg, spon=cfg.spon), sparsity=cfg.sparsity.sparsity)
        m = p["metrics"]
        row = {"method": name, **METHODS[name], "calibration_seconds": p["seconds"]["calibrate"]}
        if p["training"] is not None:
            row.update(kept=p["training"]["result"]["kept"], train_seconds=p["training"]["seconds"])
        row.update(ppl_sparse=m["ppl_sparse"], ppl_spon=m.get("ppl_spon"), gap_recovered=m["gap_recovered"], ci95=m["ci95"],
                   sparsity_measured=m["sparsity_measured"], sparsity_measured_entries=m["sparsity_measured_entries"],
                   sparsity_measured_spon=m.get("sparsity_measured_spon"))
        row["window_nll"] = window_nll(m)
        report["rows"].append(row)
        versus_first(report)
        write_text(out / "compare.json", json.dumps(report, indent=2, default=str))

    run_points(cfg, points, add, spon=cfg.spon, progress=progress, desc="compare")
    report["plots"] = plot_compare(report, out)
    write_text(out / "compare.json", json.dumps(report, indent=2, default=str))
    write_text(out / "compare.md", render_compare(report))
    return report


def _final_nll(row: dict) -> torch.Tensor:
    """Per-window NLL of the model a method ends with: sparse+SPON, or plain sparse (--no-spon, or training kept zeros)."""
    nll = row["window_nll"]
    return torch.tensor(nll.get("spon", nll["sparse"]), dtype=torch.float64)


def versus_first(r: dict) -> None:
    """Each row's final perplexity over the first row's, with a paired interval (in place)."""
    rows, tokens = r["rows"], torch.tensor(r["window_tokens"])
    first = _final_nll(rows[0])
    for x in rows[1:]:
        ratio, ci = paired_ratio(_final_nll(x), first, tokens)
        x["vs_first"] = {"method": rows[0]["method"], "ppl_ratio": ratio, "ci95": ci}


def render_compare(r: dict) -> str:
    lines = [
        f"# spon compare: {r['model']['name']} at {r['sparsity']:.0%}", "",
        f"Dense perplexity {with_ci(r['ppl_dense'], r.get('ci95_dense'))} on the held-out split of {r['data']['description']} "
        f"({r['tokens']} tokens in {r.get('windows', '?')} windows, context {r['protocol']['ctx_len']}); tokens sparsified: "
        f"{r['tokens_sparsified']}. Brackets: 95% intervals from a paired bootstrap over the evaluation windows.", "",
        "| method | sparse | sparse+SPON | gap recovered | perplexity / first row's | measured sparsity (weighted / entries; weighted with SPON) | calibration s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, x in enumerate(r["rows"]):
        ci, vs = x.get("ci95", {}), x.get("vs_first")
        ratio = with_ci(vs["ppl_ratio"], vs["ci95"]) if vs else "1 (reference)" if i == 0 and "window_nll" in x else "-"
        lines.append(f"| {x['method']} | {with_ci(x['ppl_sparse'], ci.get('ppl_sparse'))} | {with_ci(x.get('ppl_spon'), ci.get('ppl_spon'))} | "
                     f"{with_ci(x.get('gap_recovered'), ci.get('gap_recovered'), '.1%')} | {ratio} | "
                     f"{x['sparsity_measured']:.1%} / {x['sparsity_measured_entries']:.1%}"
                     + (f"; {x['sparsity_measured_spon']:.1%}" if x.get("sparsity_measured_spon") is not None else "")
                     + f" | {x['calibration_seconds']} |")
    if len(r["rows"]) > 1 and r["rows"][1].get("vs_first"):
        v = r["rows"][1]["vs_first"]
        lines += ["", f"Perplexity / first row's: the perplexity each method ends with (sparse+SPON; sparse where it has no "
                  f"vectors) over {v['method']}'s, with a 95% interval from the same paired draw of windows (below 1: lower perplexity; an "
                  "interval that excludes 1 is an ordering the held-out text supports)."]
    lines += ["", *[f"![{p}]({p})" for p in r.get("plots", [])], ""]
    return "\n".join(lines)


def compare(cfg: CompareConfig, progress: bool = True) -> str:
    """`spon compare`: run it and return compare.md."""
    run_compare(cfg, progress)
    return (Path(cfg.out) / "compare.md").read_text()

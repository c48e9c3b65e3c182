"""`spon report`: one Markdown page from what `demo`, `eval`, `sweep`, `diagnose` and `bench` wrote.

Each input folder is scanned for the JSON files those commands write; every section states the model,
the data, the protocol, which tokens were sparsified and the machine. Plots are copied next to the page.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from spon.config import opt
from spon.io.atomic import ensure_writable_dir, write_text
from spon.errors import SponError
from spon.serving.machine import describe_machine
from spon.evaluation.nudge import describe_floor
from spon.experiments.compare import render_compare
from spon.experiments.harness import render_tasks
from spon.experiments.sweep import render_sweep
from spon.experiments.tables import with_ci

__all__ = ["ReportConfig", "build_report", "report", "KNOWN_FILES"]

KNOWN_FILES = ("metrics.json", "eval.json", "sweep.json", "compare.json", "diagnose.json", "step.json", "gemv.json", "decode.json")


def _metrics_row(m: dict) -> list[str]:
    ci = m.get("ci95", {})
    return ["| dense | sparse | sparse+SPON | gap recovered | measured sparsity: sparse / +SPON |", "|---|---|---|---|---|",
            f"| {with_ci(m['ppl_dense'], ci.get('ppl_dense'))} | {with_ci(m.get('ppl_sparse'), ci.get('ppl_sparse'))} | "
            f"{with_ci(m.get('ppl_spon'), ci.get('ppl_spon'))} | {with_ci(m.get('gap_recovered'), ci.get('gap_recovered'), '.1%')} | "
            f"{with_ci(m.get('sparsity_measured'), None, '.1%')} / {with_ci(m.get('sparsity_measured_spon'), None, '.1%')} |"]


def _scored(m: dict) -> str:
    return (f"{m['data']['description']} ({m['data'].get('split', 'evaluation')}, {m['tokens']} tokens in {m.get('windows', '?')} "
            f"windows, context {m['protocol']['ctx_len']}, stride {m['protocol']['stride']}; 95% intervals: paired bootstrap "
            "over windows)")


def _demo(r: dict) -> list[str]:
    m = r["metrics"]
    return [f"Model {r['model']['name']}; data {_scored(m)}; tokens sparsified: {r['tokens_sparsified']}.", "", *_metrics_row(m)]


def _eval(r: dict) -> list[str]:
    if "tasks" in r:
        return [f"Model {r['model']['name']}; lm-evaluation-harness; tokens sparsified: {r['tokens_sparsified']}.", "",
                *render_tasks(r).splitlines()]
    return [f"Model {r['model']['name']}; data {_scored(r)}{', preset ' + r['preset'] if r.get('preset') else ''}; "
            f"tokens sparsified: {r.get('tokens_sparsified', 'none (dense model)')}.", "", *_metrics_row(r),
            *(["", describe_floor(r["rounding_floor"]) + "."] if r.get("rounding_floor") else [])]


def _sweep(r: dict) -> list[str]:
    return [line for line in render_sweep(r).splitlines()[2:] if not line.startswith("![") and not line.startswith("Machine:")]


def _diagnose(r: dict) -> list[str]:
    lines = [f"Model {r['model']['name']} at {r['sparsity']:.0%} sparsity; {r['sequences']} held-out sequences of "
             f"{r['seq_len']} tokens from {r['data']['description']}; tokens sparsified: {r['tokens_sparsified']}.", "",
             "| variant | mean relative drift over layers | final KL to dense (nats/token) |", "|---|---|---|"]
    lines += [f"| {k} | {v:.4f} | {r['kl_final'][k]:.4f} |" for k, v in r["mean_rel_l2"].items()]
    return lines


def _step(r: dict) -> list[str]:
    s = r["seconds_median"]
    return [f"Model {r['model']['name']}, batch {r['batch'][0]}x{r['batch'][1]}, {r['sparsity']:.0%} sparsity, median of {r['repeats']}.", "",
            "| SPON step | plain forward+backward | forward | step / fwd+bwd |", "|---|---|---|---|",
            f"| {s['spon_step']:.3f} s | {s['plain_fwd_bwd']:.3f} s | {s['forward']:.3f} s | {r['spon_step_over_plain_fwd_bwd']:.2f}x |"]


def _gemv(r: dict) -> list[str]:
    lines = [f"Batch 1, {r['threads']} threads, read bandwidth {r['bandwidth_gbs']['median']:.1f} GB/s (measured in the same run).", "",
             "| dtype | out x in | sparsity | vs dense F.linear | vs kernel at 0% | vs torch gather | kernel GB/s | dense GB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['dtype']} | {x['out']}x{x['in']} | {x['sparsity']:.0%} | {x['speedup_vs_dense']:.2f}x | "
                     f"{x['speedup_vs_kernel_0pct']:.2f}x | {x['speedup_vs_torch_reference']:.2f}x | {x['gbs_kernel']:.1f} | {x['gbs_dense']:.1f} |")
    return lines


def _decode(r: dict) -> list[str]:
    lines = [f"Model {r['model']['name']} at {r['sparsity']:.0%} sparsity, batch 1, greedy.", "",
             "| dtype | variant | tokens/s | vs dense |", "|---|---|---|---|"]
    for dtype, run in r["runs"].items():
        for v, rate in run["tokens_per_s"].items():
            lines.append(f"| {dtype} | {v} | {rate:.1f} | {run['speedup_vs_dense'][v]:.2f}x |")
        lcpp = run.get("llama_cpp")  # when measured its rate is a variant above ("llama_cpp")
        if lcpp and lcpp["status"] != "measured":
            lines.append(f"| {dtype} | llama.cpp dense | - ({lcpp['status']}) | |")
        for v, bound in run.get("byte_bound", {}).items():
            lines.append(f"| {dtype} | {v}: weight-bytes bound on the speed-up (not a rate) | {bound:.2f}x | |")
        if run.get("compile_seconds"):
            lines.append(f"| {dtype} | compile seconds (not in the rates) | {run['compile_seconds']} | |")
    return lines


def _compare(r: dict) -> list[str]:
    return [line for line in render_compare(r).splitlines()[2:] if not line.startswith("![")]


RENDER = {"compare.json": ("Selection rules compared", _compare), "metrics.json": ("Demo", _demo), "eval.json": ("Evaluation", _eval), "sweep.json": ("Sparsity sweep", _sweep),
          "diagnose.json": ("Diagnostics", _diagnose), "step.json": ("Training step cost", _step),
          "gemv.json": ("Sparse GEMV kernel", _gemv), "decode.json": ("Decode speed", _decode)}


def build_report(inputs: list[str | Path], out: str | Path, title: str = "spon report") -> Path:
    """Write out/report.md (and copies of the plots) from the result folders in `inputs`."""
    out = ensure_writable_dir(out)
    lines = [f"# {title}", ""]
    found = 0
    for folder in map(Path, inputs):
        if not folder.is_dir():
            raise SponError(f"{folder} is not a folder; give folders written by spon demo/eval/sweep/diagnose/bench")
        for name in KNOWN_FILES:
            path = folder / name
            if not path.is_file():
                continue
            try:
                r = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise SponError(f"cannot read {path} ({e}); rerun the command that wrote it") from None
            heading, render = RENDER[name]
            lines += [f"## {heading} ({folder.name})", "", *render(r), ""]
            for png in sorted(folder.glob("*.png")) if name != "metrics.json" else []:
                if _belongs(png.name, name):
                    target = out / f"{folder.name}-{png.name}"
                    if png.resolve() != target.resolve():
                        shutil.copyfile(png, target)
                    lines += [f"![{png.stem}]({target.name})", ""]
            lines += [f"Machine: {describe_machine(r.get('machine'))}.", ""]
            found += 1
    if not found:
        raise SponError(f"no spon results ({', '.join(KNOWN_FILES)}) in {', '.join(map(str, inputs))}")
    write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def _belongs(png: str, json_name: str) -> bool:
    owners = {"compare.json": ("compare",), "sweep.json": ("perplexity", "gap_recovered", "spon_norms"), "diagnose.json": ("drift", "always_active"),
              "gemv.json": ("gemv",), "decode.json": ("decode",)}
    return png.rsplit(".", 1)[0] in owners.get(json_name, ())


@dataclass
class ReportConfig:
    """`spon report`: one Markdown page from result folders."""

    inputs: list[str] = opt(help="result folders", factory=list, positional="+")
    out: str = opt("report_out", "folder for report.md and the plots")
    title: str = opt("spon report", "the page's title")


def report(cfg: ReportConfig, progress: bool = True) -> str:
    return f"spon: wrote {build_report(cfg.inputs, cfg.out, cfg.title)}"

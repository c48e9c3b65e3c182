"""`spon report`: one Markdown page from what `demo`, `eval`, `sweep`, `diagnose` and `bench` wrote.

Each input folder is scanned for the JSON files those commands write; every section states the model,
the data, the protocol, which tokens were sparsified and the machine. Plots are copied next to the page.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .atomic import ensure_writable_dir, write_text
from .errors import SponError

__all__ = ["build_report", "KNOWN_FILES"]

KNOWN_FILES = ("metrics.json", "eval.json", "sweep.json", "compare.json", "diagnose.json", "step.json", "gemv.json", "decode.json")


def _machine(m: dict | None) -> str:
    if not m:
        return "machine not recorded"
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU"
    return f"{m.get('platform', '?')}, {m.get('cpu_count', '?')} CPUs, torch {m.get('torch', '?')}{gpu}"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _demo(r: dict) -> list[str]:
    m = r["metrics"]
    return [f"Model {r['model']['name']}; data {m['data']['description']} (held-out split, {m['tokens']} tokens, context "
            f"{m['protocol']['ctx_len']}); tokens sparsified: {r['tokens_sparsified']}.", "",
            "| dense | sparse | sparse+SPON | gap recovered | measured sparsity |", "|---|---|---|---|---|",
            f"| {m['ppl_dense']:.3f} | {m['ppl_sparse']:.3f} | {m.get('ppl_spon') or '-'} | {_pct(m.get('gap_recovered'))} | {m['sparsity_measured']:.1%} |"]


def _eval(r: dict) -> list[str]:
    if "tasks" in r:
        variants = list(r["tasks"])
        lines = [f"Model {r['model']['name']}; lm-evaluation-harness; tokens sparsified: {r['tokens_sparsified']}.", "",
                 "| task | metric | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
        for task, metrics in r["tasks"][variants[0]]["results"].items():
            for metric in (k for k in metrics if "stderr" not in k):
                lines.append(f"| {task} | {metric} | " + " | ".join(f"{r['tasks'][v]['results'][task][metric]:.4f}" for v in variants) + " |")
        return lines
    return [f"Model {r['model']['name']}; data {r['data']['description']} ({r['tokens']} tokens, context "
            f"{r['protocol']['ctx_len']}, stride {r['protocol']['stride']}{', preset ' + r['preset'] if r.get('preset') else ''}); "
            f"tokens sparsified: {r.get('tokens_sparsified', '?')}.", "",
            "| dense | sparse | sparse+SPON | gap recovered | measured sparsity |", "|---|---|---|---|---|",
            f"| {r['ppl_dense']:.3f} | {r['ppl_sparse']:.3f} | {r.get('ppl_spon') and format(r['ppl_spon'], '.3f') or '-'} | "
            f"{_pct(r.get('gap_recovered'))} | {r['sparsity_measured']:.1%} |"]


def _sweep(r: dict) -> list[str]:
    from .sweep import render_sweep

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
    return lines


def _compare(r: dict) -> list[str]:
    from .compare import render_compare

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
            lines += [f"Machine: {_machine(r.get('machine'))}.", ""]
            found += 1
    if not found:
        raise SponError(f"no spon results ({', '.join(KNOWN_FILES)}) in {', '.join(map(str, inputs))}")
    write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def _belongs(png: str, json_name: str) -> bool:
    owners = {"compare.json": ("compare",), "sweep.json": ("perplexity", "gap_recovered", "spon_norms"), "diagnose.json": ("drift", "always_active"),
              "gemv.json": ("gemv",), "decode.json": ("decode",)}
    return png.rsplit(".", 1)[0] in owners.get(json_name, ())

"""`spon demo`: the main job on one model: calibrate, train SPON, evaluate, generate a sample with each variant,
write report.md, metrics.json and the artifact."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from spon.io.artifact import save_artifact
from spon.io.atomic import ensure_writable_dir, write_text
from spon.config import opt
from spon.serving.machine import describe_machine, machine
from spon.sparsity.sparsify import dense, without_spon
from spon.pipeline import generate_text
from spon.experiments.runner import ExperimentConfig, run_points
from spon.experiments.tables import with_ci

__all__ = ["demo", "DemoConfig", "run_demo", "render_report"]


@dataclass
class DemoConfig(ExperimentConfig):
    """`spon demo`: calibrate, train SPON, evaluate and generate on one model, end to end."""

    out: str = opt("demo_out", "output folder")
    prompt: str = opt("In Python, a list comprehension", "prompt of the greedy samples")
    max_new_tokens: int = opt(40, "tokens per sample")


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """The main job; writes report.md, metrics.json and the artifact folder into cfg.out."""
    out = ensure_writable_dir(cfg.out)
    t0 = time.time()
    report: dict = {}

    def finish(s, _label, point):
        model, tok = s.lm.model, s.lm.tokenizer
        t = time.time()
        samples = {}
        with dense(model):
            samples["dense"] = generate_text(model, tok, cfg.prompt, cfg.max_new_tokens)
        with without_spon(model):
            samples["sparse"] = generate_text(model, tok, cfg.prompt, cfg.max_new_tokens)
        samples["sparse+SPON"] = generate_text(model, tok, cfg.prompt, cfg.max_new_tokens)
        seconds = {**s.seconds, **point["seconds"], "generate": round(time.time() - t, 1)}
        save_artifact(model, out / "artifact", s.lm.identity, calibration=point["calibration"], training=point["training"],
                      metrics=point["metrics"])
        report.update(
            model=s.lm.identity, sparsity=cfg.sparsity.to_dict(), tokens_sparsified=cfg.sparsity.describe_tokens(),
            calibration=point["calibration"], training=point["training"], metrics=point["metrics"],
            samples={"prompt": cfg.prompt, **samples}, seconds={**seconds, "total": round(time.time() - t0, 1)},
            machine=machine(),
        )

    run_points(cfg, {"demo": cfg.sparsity}, finish, progress=progress)
    write_text(out / "metrics.json", json.dumps(report, indent=2, default=str))
    write_text(out / "report.md", render_report(report))
    return report


def render_report(r: dict) -> str:
    m, tr = r["metrics"], r["training"]["result"]
    proto = m["protocol"]
    ci = m.get("ci95", {})
    spon_row = (
        f"| sparse + SPON | {with_ci(m['ppl_spon'], ci.get('ppl_spon'))} | "
        f"{with_ci(m['gap_recovered'], ci.get('gap_recovered'), '.1%')} of the gap recovered |"
        if "ppl_spon" in m else "| sparse + SPON | - | no trained vectors beat zero vectors |"
    )
    lines = [
        f"# spon demo: {r['model']['name']} ({r['model']['architecture']})",
        "",
        f"- Sparsity target {r['sparsity']['sparsity']:.0%} on every decoder linear; measured on the evaluation tokens: "
        f"{m['sparsity_measured']:.1%} of weight columns skipped ({m['sparsity_measured_entries']:.1%} of input entries)"
        + (f"; with SPON {m['sparsity_measured_spon']:.1%} (restored activations pass more thresholds)"
           if m.get("sparsity_measured_spon") is not None else "") + ".",
        f"- Tokens sparsified: {r['tokens_sparsified']}.",
        f"- Calibration: {r['calibration']['tokens']} tokens of {r['calibration']['data']['description']}.",
        f"- SPON training: {tr['steps_run']} steps, lr {r['training']['config']['lr']}, batch "
        f"{r['training']['config']['batch_size']}x{r['training']['config']['seq_len']}; validation KL "
        f"{tr['val_kl_start']:.4f} -> {tr['val_kl_best']:.4f} (kept: {tr['kept']}, step {tr['best_step']}, picked by validation "
        f"{tr.get('select', 'kl').upper()}; teacher top-"
        f"{r['training']['config']['teacher_topk']} log-probs + rest){'; ' + tr['stopped'] if tr['stopped'] else ''}.",
        f"- Evaluation: {m['data']['split']} split of {m['data']['description']}, {m['tokens']} tokens scored in "
        f"{m.get('windows', '?')} windows of context {proto['ctx_len']}, stride {proto['stride']}, "
        f"{'BOS at the start of each window' if m['bos'] else 'no BOS (the tokenizer adds none)'}; 95% intervals from a "
        "paired bootstrap over the windows.",
        "",
        "| model | perplexity [95% interval] | |",
        "|---|---|---|",
        f"| dense | {with_ci(m['ppl_dense'], ci.get('ppl_dense'))} | |",
        f"| sparse | {with_ci(m['ppl_sparse'], ci.get('ppl_sparse'))} | |",
        spon_row,
        "",
        f"## Samples (greedy, prompt: {r['samples']['prompt']!r})",
        "",
    ]
    for k in ("dense", "sparse", "sparse+SPON"):
        lines += [f"**{k}:** {r['samples'][k].strip()!r}", ""]
    lines += [f"Machine: {describe_machine(r['machine'])}. Seconds: {r['seconds']}.", ""]
    return "\n".join(lines)


def demo(cfg: DemoConfig, progress: bool = True) -> str:
    """`spon demo`: run it and return report.md."""
    run_demo(cfg, progress)
    return (Path(cfg.out) / "report.md").read_text()

"""`spon sweep`: calibrate, train and evaluate at several sparsities on one model; one table and plots."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .artifact import save_artifact
from .atomic import ensure_writable_dir, write_text
from .config import SparsityConfig, TrainConfig
from .data import load_splits, tokenize
from .evaluate import EvalProtocol, bos_token_id, evaluate_variants, perplexity
from .models import DEFAULT_MODEL, load_model
from .sparsify import sparse_modules, unsparsify_

__all__ = ["SweepConfig", "run_sweep", "iso_sparsity", "spon_norms", "layer_and_kind", "render_sweep"]


@dataclass
class SweepConfig:
    model: str = DEFAULT_MODEL
    out: str = "sweep_out"
    data: str = "pydoc"
    eval_data: str | None = None  # evaluate on another corpus's held-out split (cross-domain); None: same as data
    dtype: str = "float32"
    sparsities: tuple[float, ...] = (0.25, 0.4, 0.5, 0.6, 0.7)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)  # everything but the sparsity level
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    calib_tokens: int = 8192
    iso_reference: float = 0.5  # iso-perplexity: highest sparsity where SPON is no worse than plain sparsity here


def layer_and_kind(name: str) -> tuple[int, str]:
    """(block index, projection name) of a module name: 'model.layers.3.mlp.down_proj' -> (3, 'mlp.down_proj')."""
    m = re.search(r"\.(\d+)\.(.+)$", name)
    if not m:
        return -1, name
    kind = m.group(2).split(".")
    return int(m.group(1)), ".".join(kind[-2:])


def spon_norms(model) -> dict[str, float]:
    """||W alpha|| (what SPON adds to each layer's output) by module name, float32."""
    with torch.no_grad():
        return {name: float(m.spon_output().norm()) for name, m in sparse_modules(model).items()}


def _interp_crossing(s0, p0, s1, p1, ref):
    """Sparsity where the log-perplexity line from (s0, p0) to (s1, p1) reaches ref."""
    a, b, r = math.log(p0), math.log(p1), math.log(ref)
    return s0 if b == a else s0 + (r - a) / (b - a) * (s1 - s0)


def iso_sparsity(points: list[tuple[float, float]], reference: float) -> tuple[float | None, str]:
    """The highest sparsity at which perplexity is <= reference, interpolating log-perplexity linearly.

    points: (sparsity, perplexity) pairs. Returns (sparsity, note): note is "" when the curve crosses the
    reference inside the sweep, "beyond" when even the highest sparsity is below it (the value is a lower
    bound), "never" when even the lowest sparsity is above it (value None).
    """
    pts = sorted(points)
    if not pts:
        return None, "never"
    best: float | None = None
    for (s0, p0), (s1, p1) in zip(pts, pts[1:]):
        if p0 <= reference < p1:
            best = _interp_crossing(s0, p0, s1, p1, reference)
    if pts[-1][1] <= reference:
        return pts[-1][0], "beyond"
    if best is None:
        return (pts[0][0], "") if pts[0][1] <= reference else (None, "never")
    return best, ""


def _reference_ppl(rows: list[dict], at: float) -> float | None:
    """Plain-sparse perplexity at sparsity `at`: measured, or interpolated in log space between neighbours."""
    pts = sorted((r["sparsity"], r["ppl_sparse"]) for r in rows)
    for s, p in pts:
        if abs(s - at) < 1e-9:
            return p
    for (s0, p0), (s1, p1) in zip(pts, pts[1:]):
        if s0 < at < s1:
            return math.exp(math.log(p0) + (at - s0) / (s1 - s0) * (math.log(p1) - math.log(p0)))
    return None


def summarise(rows: list[dict], reference: float) -> dict:
    ref = _reference_ppl(rows, reference)
    out = {"iso_reference_sparsity": reference, "iso_reference_ppl": ref, "iso_sparsity": None, "iso_note": "no reference"}
    if ref is not None:
        out["iso_sparsity"], out["iso_note"] = iso_sparsity([(r["sparsity"], r["ppl_spon"]) for r in rows if r.get("ppl_spon")], ref)
    return out


def run_sweep(cfg: SweepConfig, progress: bool = True) -> dict:
    """Calibrate + train + evaluate at each sparsity; writes sweep.json, sweep.md, plots and one artifact per point."""
    from . import pipeline
    from .plots import plot_sweep

    out = ensure_writable_dir(cfg.out)
    lm = load_model(cfg.model, cfg.dtype)
    splits = load_splits(cfg.data)
    eval_splits = load_splits(cfg.eval_data) if cfg.eval_data else splits
    bos = bos_token_id(lm.tokenizer)
    eval_ids = tokenize(lm.tokenizer, eval_splits.evaluation)
    t0 = time.time()
    ppl_dense, tokens = perplexity(lm.model, eval_ids, cfg.protocol, bos, progress=progress, desc="dense")
    report = {
        "model": lm.identity, "data": splits.source, "eval_data": {**eval_splits.source, "split": "evaluation"},
        "protocol": cfg.protocol.to_dict(), "tokens_sparsified": cfg.sparsity.describe_tokens(),
        "train": cfg.train.to_dict(), "calib_tokens": cfg.calib_tokens, "ppl_dense": ppl_dense, "tokens": tokens,
        "dense_seconds": round(time.time() - t0, 1), "rows": [], "machine": pipeline.machine(),
    }
    for s in tqdm(cfg.sparsities, desc="sweep", disable=not progress):
        t0 = time.time()
        unsparsify_(lm.model)
        config = SparsityConfig.from_dict({**cfg.sparsity.to_dict(), "sparsity": s})
        calibration = pipeline.calibrate_model(lm, splits, config, calib_tokens=cfg.calib_tokens, seed=cfg.train.seed, progress=progress)
        training = pipeline.train_model(lm, splits, cfg.train, progress=progress)
        m = evaluate_variants(lm.model, eval_ids, cfg.protocol, bos, progress=progress, ppl_dense=ppl_dense)
        row = {
            "sparsity": s, "ppl_sparse": m["ppl_sparse"], "ppl_spon": m.get("ppl_spon"), "gap_recovered": m["gap_recovered"],
            "sparsity_measured": m["sparsity_measured"], "kept": training["result"]["kept"],
            "val_kl_start": training["result"]["val_kl_start"], "val_kl_best": training["result"]["val_kl_best"],
            "train_seconds": training["seconds"], "seconds": round(time.time() - t0, 1), "spon_norms": spon_norms(lm.model),
        }
        save_artifact(lm.model, out / f"s{s:.2f}" / "artifact", lm.identity, calibration=calibration, training=training, metrics=m)
        report["rows"].append(row)
        report.update(summarise(report["rows"], cfg.iso_reference))
        write_text(out / "sweep.json", json.dumps(report, indent=2, default=str))  # after every point: a kill loses one
    report["plots"] = plot_sweep(report, out)
    write_text(out / "sweep.json", json.dumps(report, indent=2, default=str))
    write_text(out / "sweep.md", render_sweep(report))
    return report


def _fmt(x, spec=".3f"):
    if x is None:
        return "-"
    return "n/a (no gap)" if isinstance(x, float) and math.isnan(x) else format(x, spec)


def render_sweep(r: dict) -> str:
    lines = [
        f"# spon sweep: {r['model']['name']}",
        "",
        f"Calibration and SPON training on {r['data']['description']}; evaluation on the held-out split of "
        f"{r['eval_data']['description']} ({r['tokens']} tokens, context {r['protocol']['ctx_len']}, stride "
        f"{r['protocol']['stride']}); tokens sparsified: {r['tokens_sparsified']}. SPON: {r['train']['steps']} steps x "
        f"{r['train']['batch_size']}x{r['train']['seq_len']} tokens, lr {r['train']['lr']}, on {r['train']['spon_on']} layers"
        + (f", {r['train']['neurons']} output-space neurons per layer" if r["train"].get("neurons") else "") + ".",
        "",
        f"Dense perplexity: {r['ppl_dense']:.3f}",
        "",
        "| target sparsity | measured | sparse | sparse+SPON | gap recovered | kept | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['sparsity']:.0%} | {row['sparsity_measured']:.1%} | {row['ppl_sparse']:.3f} | {_fmt(row['ppl_spon'])} | "
            f"{_fmt(row['gap_recovered'], '.1%')} | {row['kept']} | {row['train_seconds']} |"
        )
    iso = r.get("iso_sparsity")
    lines += ["", (
        f"Iso-perplexity sparsity: {iso:.1%}{' (at least; the sweep ends below the reference)' if r['iso_note'] == 'beyond' else ''}: "
        f"the highest sparsity at which sparse+SPON is no worse than plain sparsity at {r['iso_reference_sparsity']:.0%} "
        f"(perplexity {r['iso_reference_ppl']:.3f}; log-perplexity interpolated linearly)."
        if iso is not None else f"Iso-perplexity sparsity: not found ({r['iso_note']})."
    )]
    for name in r.get("plots", []):
        lines += ["", f"![{name}]({name})"]
    m = r["machine"]
    lines += ["", f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}{', GPU ' + m['cuda'] if m['cuda'] else ', no GPU'}.", ""]
    return "\n".join(lines)

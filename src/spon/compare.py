"""`spon compare`: each peer's rule, with and without SPON, at the same sparsity on the same data; table + plot."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .atomic import ensure_writable_dir, write_text
from .config import SparsityConfig, TrainConfig
from .data import load_splits, tokenize
from .evaluate import EvalProtocol, bos_token_id, evaluate_variants, perplexity
from .models import DEFAULT_MODEL, load_model
from .sparsify import unsparsify_

__all__ = ["METHODS", "CompareConfig", "run_compare", "render_compare"]

METHODS = {  # name -> the SparsityConfig fields that make it
    "teal": {"rule": "magnitude"},
    "teal-greedy": {"rule": "magnitude", "allocation": "greedy"},
    "wina": {"rule": "wina"},
    "cats": {"rule": "cats"},
    "rsparse": {"rule": "rsparse"},
    "topk": {"rule": "magnitude", "selection": "topk"},
}


@dataclass
class CompareConfig:
    model: str = DEFAULT_MODEL
    out: str = "compare_out"
    data: str = "pydoc"
    dtype: str = "float32"
    methods: tuple[str, ...] = tuple(METHODS)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    spon: bool = True
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    calib_tokens: int = 8192


def run_compare(cfg: CompareConfig, progress: bool = True) -> dict:
    from . import pipeline
    from .plots import plot_compare

    out = ensure_writable_dir(cfg.out)
    lm = load_model(cfg.model, cfg.dtype)
    splits = load_splits(cfg.data)
    bos = bos_token_id(lm.tokenizer)
    ids = tokenize(lm.tokenizer, splits.evaluation)
    ppl_dense, tokens = perplexity(lm.model, ids, cfg.protocol, bos, progress=progress, desc="dense")
    report = {"model": lm.identity, "data": splits.source, "protocol": cfg.protocol.to_dict(), "sparsity": cfg.sparsity.sparsity,
              "tokens_sparsified": cfg.sparsity.describe_tokens(), "train": cfg.train.to_dict() if cfg.spon else None,
              "ppl_dense": ppl_dense, "tokens": tokens, "rows": [], "machine": pipeline.machine()}
    for name in tqdm(cfg.methods, desc="compare", disable=not progress):
        unsparsify_(lm.model)
        config = SparsityConfig.from_dict({**cfg.sparsity.to_dict(), **METHODS[name]})
        t0 = time.time()
        pipeline.calibrate_model(lm, splits, config, calib_tokens=cfg.calib_tokens, seed=cfg.train.seed, progress=progress)
        calib_s = time.time() - t0
        row = {"method": name, **METHODS[name], "calibration_seconds": round(calib_s, 1)}
        if cfg.spon:
            training = pipeline.train_model(lm, splits, cfg.train, progress=progress)
            row.update(kept=training["result"]["kept"], train_seconds=training["seconds"])
        m = evaluate_variants(lm.model, ids, cfg.protocol, bos, progress=progress, ppl_dense=ppl_dense)
        row.update(ppl_sparse=m["ppl_sparse"], ppl_spon=m.get("ppl_spon"), gap_recovered=m["gap_recovered"],
                   sparsity_measured=m["sparsity_measured"], sparsity_measured_entries=m["sparsity_measured_entries"])
        report["rows"].append(row)
        write_text(out / "compare.json", json.dumps(report, indent=2, default=str))
    report["plots"] = plot_compare(report, out)
    write_text(out / "compare.json", json.dumps(report, indent=2, default=str))
    write_text(out / "compare.md", render_compare(report))
    return report


def render_compare(r: dict) -> str:
    lines = [
        f"# spon compare: {r['model']['name']} at {r['sparsity']:.0%}", "",
        f"Dense perplexity {r['ppl_dense']:.3f} on the held-out split of {r['data']['description']} ({r['tokens']} tokens, "
        f"context {r['protocol']['ctx_len']}); tokens sparsified: {r['tokens_sparsified']}.", "",
        "| method | sparse | sparse+SPON | gap recovered | measured sparsity (weighted / entries) | calibration s |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        spon = "-" if x.get("ppl_spon") is None else f"{x['ppl_spon']:.3f}"
        gap = "-" if x.get("gap_recovered") is None else f"{x['gap_recovered']:.1%}"
        lines.append(f"| {x['method']} | {x['ppl_sparse']:.3f} | {spon} | {gap} | {x['sparsity_measured']:.1%} / "
                     f"{x['sparsity_measured_entries']:.1%} | {x['calibration_seconds']} |")
    lines += ["", *[f"![{p}]({p})" for p in r.get("plots", [])], ""]
    return "\n".join(lines)

"""The jobs the CLI runs, as plain functions: calibrate, train, evaluate, export, generate, demo."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .artifact import is_artifact, load_artifact, save_artifact
from .atomic import atomic_dir, ensure_writable_dir, write_text
from .calibrate import calibrate_
from .config import SparsityConfig, TrainConfig
from .data import TextSplits, load_splits, sequences, tokenize
from .errors import SponError
from .evaluate import EvalProtocol, bos_token_id, evaluate_variants
from .fold import fold_
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .sparsify import dense, sparsify_, without_spon
from .train import train_spon_

__all__ = [
    "machine", "open_model", "calibrate_model", "train_model", "evaluate_model", "export_model", "generate_text",
    "DemoConfig", "run_demo",
]


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def open_model(
    spec: str, dtype: str = "float32", artifact: str | None = None, device_map: str | None = None
) -> tuple[LoadedModel, dict | None]:
    """Load a model, and an artifact onto it: the one given, or the one inside an exported folder."""
    lm = load_model(spec, dtype, device_map=device_map)
    meta = None
    if artifact is not None:
        meta = load_artifact(lm.model, artifact)
    elif lm.folder is not None and is_artifact(lm.folder):
        meta = load_artifact(lm.model, lm.folder)
    return lm, meta


def calibrate_model(
    lm: LoadedModel, splits: TextSplits, config: SparsityConfig, *, calib_tokens: int = 8192, seq_len: int = 256,
    batch_size: int = 4, seed: int = 0, progress: bool = True,
) -> dict:
    """Sparsify and calibrate thresholds on the calibration split; returns the calibration description."""
    ids = tokenize(lm.tokenizer, splits.calibration)
    bos = bos_token_id(lm.tokenizer)
    seqs = sequences(ids, seq_len, calib_tokens, bos=bos)
    if len(seqs) == 0:
        raise SponError(f"calibration text has {ids.numel()} tokens, fewer than one {seq_len}-token sequence; give more text")
    sparsify_(lm.model, config)
    t0 = time.time()
    if config.allocation == "greedy":
        from .allocate import greedy_allocate_

        greedy_allocate_(lm.model, list(seqs.split(batch_size)), config, seed=seed, progress=progress)
    else:
        calibrate_(lm.model, list(seqs.split(batch_size)), config, seed=seed, progress=progress)
    return {
        "data": splits.source,
        "split": "calibration",
        "tokens": int(seqs.numel()),
        "seq_len": seq_len,
        "bos": bos is not None,
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
    }


def train_model(
    lm: LoadedModel, splits: TextSplits, config: TrainConfig, *, progress: bool = True, checkpoint: str | Path | None = None,
    checkpoint_every: int = 10, resume: bool = False,
) -> dict:
    """Train SPON vectors on the calibration split, keeping the best by KL on the validation split."""
    t0 = time.time()
    result = train_spon_(
        lm.model, tokenize(lm.tokenizer, splits.calibration), tokenize(lm.tokenizer, splits.validation), config,
        bos=bos_token_id(lm.tokenizer), progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        resume=resume,
    )
    return {"config": config.to_dict(), "result": result.to_dict(), "data": splits.source, "seconds": round(time.time() - t0, 1)}


def evaluate_model(lm: LoadedModel, splits: TextSplits, protocol: EvalProtocol, *, progress: bool = True) -> dict:
    """Perplexity of dense, sparse and sparse+SPON on the held-out evaluation split."""
    ids = tokenize(lm.tokenizer, splits.evaluation)
    out = evaluate_variants(lm.model, ids, protocol, bos_token_id(lm.tokenizer), progress=progress)
    out["data"] = {**splits.source, "split": "evaluation"}
    return out


def export_model(spec: str, artifact: str, out: str, dtype: str = "float32") -> Path:
    """Write a model folder (base weights + tokenizer + folded SPON artifact) that `load_model` runs sparse."""
    out_path = Path(out)
    ensure_writable_dir(out_path.parent)
    lm = load_model(spec, dtype)
    with atomic_dir(out_path) as tmp:
        lm.model.save_pretrained(tmp)  # the dense base weights, before any module is swapped
        lm.tokenizer.save_pretrained(tmp)
        meta = load_artifact(lm.model, artifact)
        fold_(lm.model)
        keep = {k: v for k, v in meta.items() if k in ("calibration", "training", "metrics")}
        save_artifact(lm.model, tmp, {**lm.identity, "name": f"{spec} (exported)"}, exported_from=str(artifact), **keep)
    return out_path


@torch.no_grad()
def generate_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of `prompt` (the new text only)."""
    enc = tokenizer(prompt, return_tensors="pt")
    device = next(model.parameters()).device
    out = model.generate(
        **{k: v.to(device) for k, v in enc.items()}, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@dataclass
class DemoConfig:
    """`spon demo`: calibrate, train SPON, evaluate and generate on one model, end to end."""

    model: str = DEFAULT_MODEL
    out: str = "demo_out"
    data: str = "pydoc"
    dtype: str = "float32"
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    calib_tokens: int = 8192  # 32 sequences of 256: thresholds settle well before this
    prompt: str = "In Python, a list comprehension"
    max_new_tokens: int = 40


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """The main job; writes report.md, metrics.json and the artifact folder into cfg.out."""
    out = ensure_writable_dir(cfg.out)
    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.time()
        timings[name] = round(now - since, 1)
        return now

    lm = load_model(cfg.model, cfg.dtype)
    splits = load_splits(cfg.data)
    t = lap("load", t0)
    calibration = calibrate_model(lm, splits, cfg.sparsity, calib_tokens=cfg.calib_tokens, seed=cfg.train.seed, progress=progress)
    t = lap("calibrate", t)
    training = train_model(lm, splits, cfg.train, progress=progress)
    t = lap("train", t)
    metrics = evaluate_model(lm, splits, cfg.protocol, progress=progress)
    t = lap("evaluate", t)
    samples = {}
    with dense(lm.model):
        samples["dense"] = generate_text(lm.model, lm.tokenizer, cfg.prompt, cfg.max_new_tokens)
    with without_spon(lm.model):
        samples["sparse"] = generate_text(lm.model, lm.tokenizer, cfg.prompt, cfg.max_new_tokens)
    samples["sparse+SPON"] = generate_text(lm.model, lm.tokenizer, cfg.prompt, cfg.max_new_tokens)
    t = lap("generate", t)
    save_artifact(lm.model, out / "artifact", lm.identity, calibration=calibration, training=training, metrics=metrics)
    lap("total", t0)
    report = {
        "model": lm.identity,
        "sparsity": cfg.sparsity.to_dict(),
        "tokens_sparsified": cfg.sparsity.describe_tokens(),
        "calibration": calibration,
        "training": training,
        "metrics": metrics,
        "samples": {"prompt": cfg.prompt, **samples},
        "seconds": timings,
        "machine": machine(),
    }
    write_text(out / "metrics.json", json.dumps(report, indent=2, default=str))
    write_text(out / "report.md", render_report(report))
    return report


def render_report(r: dict) -> str:
    m, tr = r["metrics"], r["training"]["result"]
    proto = m["protocol"]
    spon_row = (
        f"| sparse + SPON | {m['ppl_spon']:.3f} | {m['gap_recovered']:.1%} of the gap recovered |"
        if "ppl_spon" in m else "| sparse + SPON | - | no trained vectors beat zero vectors |"
    )
    lines = [
        f"# spon demo: {r['model']['name']} ({r['model']['architecture']})",
        "",
        f"- Sparsity target {r['sparsity']['sparsity']:.0%} on every decoder linear; measured on the evaluation tokens: "
        f"{m['sparsity_measured']:.1%} of weight columns skipped ({m['sparsity_measured_entries']:.1%} of input entries).",
        f"- Tokens sparsified: {r['tokens_sparsified']}.",
        f"- Calibration: {r['calibration']['tokens']} tokens of {r['calibration']['data']['description']}.",
        f"- SPON training: {tr['steps_run']} steps, lr {r['training']['config']['lr']}, batch "
        f"{r['training']['config']['batch_size']}x{r['training']['config']['seq_len']}; validation KL "
        f"{tr['val_kl_start']:.4f} -> {tr['val_kl_best']:.4f} (kept: {tr['kept']}, step {tr['best_step']}; teacher top-{r['training']['config']['teacher_topk']} log-probs + rest){'; ' + tr['stopped'] if tr['stopped'] else ''}.",
        f"- Evaluation: held-out split, {m['tokens']} tokens scored, context {proto['ctx_len']}, stride {proto['stride']}, "
        f"{'BOS at the start of each window' if m['bos'] else 'no BOS (the tokenizer adds none)'}.",
        "",
        "| model | perplexity | |",
        "|---|---|---|",
        f"| dense | {m['ppl_dense']:.3f} | |",
        f"| sparse | {m['ppl_sparse']:.3f} | |",
        spon_row,
        "",
        f"## Samples (greedy, prompt: {r['samples']['prompt']!r})",
        "",
    ]
    for k in ("dense", "sparse", "sparse+SPON"):
        lines += [f"**{k}:** {r['samples'][k].strip()!r}", ""]
    mach = r["machine"]
    lines += [
        f"Machine: {mach['platform']}, {mach['cpu_count']} CPUs, torch {mach['torch']}, {mach['torch_threads']} threads"
        f"{', GPU ' + mach['cuda'] if mach['cuda'] else ', no GPU'}. Seconds: {r['seconds']}.",
        "",
    ]
    return "\n".join(lines)

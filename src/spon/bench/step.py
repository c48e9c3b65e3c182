"""`spon bench step`: the cost of one SPON training step next to one plain forward+backward, in one run.

Measured side by side on the same batch, alternating, so both see the same machine load:
- spon_step: what `train_spon_` does per step (student forward, KL to the cached top-k teacher,
  backward to the alphas only, gradient clipping, Adam update);
- plain_fwd_bwd: a plain forward+backward of the same sparse model with next-token cross-entropy
  and every weight trainable (gradients for all parameters, no optimiser);
- forward: a forward pass without gradients (for scale).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from spon.io.atomic import ensure_writable_dir
from spon.config import SparsityConfig, TrainConfig, opt
from spon.io.models import ModelArgs
from spon.serving.machine import machine
from spon.errors import SponError
from spon.evaluation.evaluate import next_token_nll
from spon.sparsity.sparsify import sparse_modules
from spon.training.train import Teacher, lr_at, spon_parameters_
from spon.bench.output import write_json

__all__ = ["bench_step", "StepBench", "run_step_bench"]


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_step(model: nn.Module, batch: torch.Tensor, config: TrainConfig, *, repeats: int = 5, warmup: int = 1) -> dict:
    """Median seconds of a SPON step, a plain forward+backward and a forward on `batch` [B, T]; ratios too."""
    if not sparse_modules(model):
        raise SponError("bench_step needs a sparsified, calibrated model (sparsify_ and calibrate_ first)")
    model.eval()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    teacher = Teacher(model, batch, config.teacher_topk, len(batch))
    rows = torch.arange(len(batch))
    ids = batch.to(teacher.device)
    saved = [m.alpha.detach().clone() for m in sparse_modules(model).values()]

    def spon_step():
        loss = teacher.kl(rows, model(input_ids=ids).logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(alphas, config.grad_clip)
        opt.step()

    def plain_fwd_bwd():
        logits = model(input_ids=ids).logits
        loss = next_token_nll(logits, ids).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    def forward():
        with torch.no_grad():
            model(input_ids=ids)

    times: dict[str, list[float]] = {"spon_step": [], "plain_fwd_bwd": [], "forward": []}
    try:
        alphas = spon_parameters_(model, config)
        opt = torch.optim.Adam(alphas, lr=lr_at(1, config))
        for i in range(warmup + repeats):  # alternate, so drifting load hits all three alike
            for p, _ in frozen:
                p.requires_grad_(False)
            for a in alphas:
                a.requires_grad_(True)
            t = _time(spon_step, 1)[0]
            if i >= warmup:
                times["spon_step"].append(t)
            for p, _ in frozen:
                p.requires_grad_(True)
            t = _time(plain_fwd_bwd, 1)[0]
            if i >= warmup:
                times["plain_fwd_bwd"].append(t)
            t = _time(forward, 1)[0]
            if i >= warmup:
                times["forward"].append(t)
    finally:
        model.zero_grad(set_to_none=True)
        for p, req in frozen:
            p.requires_grad_(req)
        with torch.no_grad():
            for m, a in zip(sparse_modules(model).values(), saved):
                m.alpha.requires_grad_(False)
                m.alpha.copy_(a)
                m.neurons = m.rates = None
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": list(batch.shape),
        "repeats": repeats,
        "seconds_median": med,
        "seconds_all": times,
        "spon_step_over_plain_fwd_bwd": med["spon_step"] / med["plain_fwd_bwd"],
        "spon_step_over_forward": med["spon_step"] / med["forward"],
    }


@dataclass
class StepBench(ModelArgs):
    """`spon bench step`: one SPON training step vs one plain forward+backward of the sparse model."""

    data: str = opt("pydoc", "text: pydoc or stdlib (embedded), wikitext2, c4, or a local file/folder")
    sparsity: SparsityConfig = opt(factory=SparsityConfig)
    train: TrainConfig = opt(factory=TrainConfig)
    calib_tokens: int = opt(8192, "calibration tokens for thresholds")
    repeats: int = opt(5, "alternated rounds (median)")
    out: str | None = opt(None, "folder for step.json", type="str")


def run_step_bench(cfg: StepBench, progress: bool = True) -> str:
    from spon.io.data import load_splits, sequences, tokenize
    from spon.io.data import bos_token_id
    from spon.pipeline import calibrate_model, open_model

    if cfg.out:
        ensure_writable_dir(cfg.out)
    splits = load_splits(cfg.data)
    lm, _ = open_model(cfg.model, cfg.dtype, None, cfg.device_map, check_weights=not cfg.ignore_weights,
                       trust_remote_code=cfg.trust_remote_code)
    calibrate_model(lm, splits, cfg.sparsity, calib_tokens=cfg.calib_tokens, progress=progress)
    seqs = sequences(tokenize(lm.tokenizer, splits.calibration), cfg.train.seq_len, bos=bos_token_id(lm.tokenizer))
    if len(seqs) < cfg.train.batch_size:
        raise SponError(f"need {cfg.train.batch_size} sequences of {cfg.train.seq_len} tokens for one batch; give more text")
    res = bench_step(lm.model, seqs[: cfg.train.batch_size], cfg.train, repeats=cfg.repeats)
    return write_json(cfg.out, "step.json", {"benchmark": "step", "model": lm.identity, "sparsity": cfg.sparsity.sparsity,
                                             **res, "machine": machine()})

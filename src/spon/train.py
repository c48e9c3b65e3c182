"""SPON training: learn one input vector per sparsified linear by distillation from the dense model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import sequences
from .errors import SponError
from .kl import kl_per_token
from .sparsify import dense, sparse_modules

__all__ = ["train_spon_", "TrainResult", "validation_kl", "lr_at"]


@dataclass
class TrainResult:
    """What training did: validation KL before/after, the step whose alphas were kept, and the history."""

    val_kl_start: float
    val_kl_best: float
    best_step: int
    steps_run: int
    kept: str  # "trained" or "start" (no trained vectors beat the starting ones)
    stopped: str = ""  # why training stopped early, if it did
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr/10 at the last step (step is 1-based)."""
    if step <= config.warmup:
        return config.lr * step / max(1, config.warmup)
    frac = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def _teacher_logp(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with dense(model):
        return F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)


@torch.no_grad()
def validation_kl(model: nn.Module, batches: list[torch.Tensor], teacher: list[torch.Tensor]) -> float:
    """Mean per-token KL(dense || sparse) over validation batches whose teacher log-probs are given."""
    total, count = 0.0, 0
    for ids, t_logp in zip(batches, teacher):
        n = ids.numel()
        total += float(kl_per_token(t_logp, model(input_ids=ids).logits)) * n
        count += n
    return total / count


def train_spon_(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train the alphas of every `SparseLinear` in place; every other weight stays frozen.

    train_ids, val_ids: 1-D token streams (calibration and held-out validation parts).
    The alphas with the lowest validation KL are kept, including the starting ones (zeros by default),
    so training never leaves the model worse on validation than it found it.
    """
    config = config or TrainConfig()
    mods = sparse_modules(model)
    if not mods:
        raise SponError("the model has no sparse layers; call sparsify_ and calibrate_ before training SPON")
    device = next(model.parameters()).device
    train_seqs = sequences(train_ids, config.seq_len)
    val_seqs = sequences(val_ids, config.seq_len)[: config.val_sequences]
    if len(train_seqs) < 1 or len(val_seqs) < 1:
        raise SponError(
            f"too little text to train SPON: need at least one {config.seq_len}-token sequence for training and "
            f"for validation, got {train_ids.numel()} and {val_ids.numel()} tokens; use more text or a smaller --seq-len"
        )
    gen = torch.Generator().manual_seed(config.seed)
    model.eval()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    alphas = [m.alpha for m in mods.values()]
    for a in alphas:
        a.requires_grad_(True)
    try:
        val_batches = [val_seqs[i : i + config.batch_size].to(device) for i in range(0, len(val_seqs), config.batch_size)]
        teacher_val = [_teacher_logp(model, b) for b in val_batches]
        best = validation_kl(model, val_batches, teacher_val)
        result = TrainResult(val_kl_start=best, val_kl_best=best, best_step=0, steps_run=0, kept="start")
        result.history.append({"step": 0, "val_kl": best})
        best_state = [a.detach().clone() for a in alphas]
        opt = torch.optim.Adam(alphas, lr=config.lr)
        order = torch.randperm(len(train_seqs), generator=gen)
        pos = 0
        bar = tqdm(range(1, config.steps + 1), desc="training SPON", disable=not progress)
        for step in bar:
            idx = torch.cat([order, order])[pos : pos + config.batch_size]  # wraps around the epoch
            pos = (pos + config.batch_size) % len(order)
            ids = train_seqs[idx].to(device)
            t_logp = _teacher_logp(model, ids)
            loss = kl_per_token(t_logp, model(input_ids=ids).logits)
            if not torch.isfinite(loss):
                result.stopped = f"non-finite loss at step {step}; kept the alphas of step {result.best_step}"
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(alphas, config.grad_clip)
            opt.step()
            result.steps_run = step
            record = {"step": step, "loss": loss.item(), "lr": lr_at(step, config)}
            if step % config.eval_every == 0 or step == config.steps:
                v = validation_kl(model, val_batches, teacher_val)
                record["val_kl"] = v
                if v < result.val_kl_best:
                    result.val_kl_best, result.best_step, result.kept = v, step, "trained"
                    best_state = [a.detach().clone() for a in alphas]
            result.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", best_val=f"{result.val_kl_best:.4f}")
    finally:
        for p, req in frozen:
            p.requires_grad_(req)
        for a in alphas:
            a.requires_grad_(False)
    with torch.no_grad():
        for a, b in zip(alphas, best_state):
            a.copy_(b)
    return result

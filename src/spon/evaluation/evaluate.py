"""Perplexity with a stated protocol, for dense, sparse and sparse+SPON, and the share of the gap recovered."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from spon.evaluation.intervals import BOOTSTRAP_SAMPLES, paired_bootstrap
from spon.config import opt
from spon.errors import SponError
from spon.sparsity.sparsify import dense, measure_sparsity, sparse_modules, without_spon

__all__ = [
    "PRESETS", "EvalProtocol", "WindowScores", "perplexity", "window_scores", "evaluate_variants", "gap_recovered",
    "next_token_nll",
]


@dataclass
class EvalProtocol:
    """How perplexity is measured; every report states it."""

    ctx_len: int = opt(512, "evaluation window in tokens, BOS included where the tokenizer adds one")
    stride: int | None = opt(None, "window start step (default: the context length); smaller scores only each window's new tokens",
                             type="int")
    max_tokens: int | None = opt(None, "evaluate on the first this many tokens only (default: all)", type="int")
    batch_size: int = opt(4, "windows per forward (and lm-eval's batch size)", flag="eval-batch-size")

    def __post_init__(self):
        if self.stride is None:
            self.stride = self.ctx_len
        if self.ctx_len < 2 or not 1 <= self.stride <= self.ctx_len:
            raise SponError(f"need ctx_len >= 2 and 1 <= stride <= ctx_len, got {self.ctx_len} and {self.stride}")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {  # the field's perplexity protocols; `--data PATH` runs the same protocol on local text
    "wikitext2": {"data": "wikitext2", "ctx_len": 2048, "stride": 2048,
                  "description": "wikitext-2-raw-v1 test split, documents joined with blank lines, windows of 2048, stride 2048"},
    "c4": {"data": "c4", "ctx_len": 2048, "stride": 2048,
           "description": "allenai/c4 en validation shard 00000-of-00008 (documents 1000-2999), windows of 2048, stride 2048"},
}


def _windows(n: int, body: int, stride: int, bos: bool) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) token ranges: each window covers [begin, end), scores [first_scored, end)."""
    out, prev_end = [], 0
    for begin in range(0, n, min(stride, body)):  # a stride past the window would skip tokens
        end = min(begin + body, n)
        first = max(prev_end, begin if bos else begin + 1)
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return out


@dataclass
class WindowScores:
    """One model's score on the evaluation windows: perplexity, scored tokens, and per window the summed NLL and token
    count (what the bootstrap resamples)."""

    ppl: float
    tokens: int
    nll: torch.Tensor  # [W] float64
    counts: torch.Tensor  # [W] int64


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (nats, float32) of labels[:, 1:] under logits[:, :-1] (logits [B, T, V]); labels -100 score 0."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="none")


@torch.no_grad()
def window_scores(
    model: nn.Module, ids: torch.Tensor, protocol: EvalProtocol, bos: int | None, *, progress: bool = True, desc: str = "perplexity"
) -> WindowScores:
    """exp(mean NLL) over the scored tokens of `ids` (1-D), with the NLL and token count of every window."""
    if protocol.max_tokens:
        ids = ids[: protocol.max_tokens]
    body = protocol.ctx_len - (1 if bos is not None else 0)
    if ids.numel() < body + (0 if bos is not None else 1):
        raise SponError(
            f"evaluation text has {ids.numel()} tokens, fewer than one {protocol.ctx_len}-token window; "
            "give more text or a smaller ctx_len"
        )
    device = next(model.parameters()).device
    wins = _windows(ids.numel(), body, protocol.stride, bos is not None)
    groups: dict[int, list] = {}
    for w in wins:
        groups.setdefault(w[1] - w[0], []).append(w)
    batches = [g[i : i + protocol.batch_size] for g in groups.values() for i in range(0, len(g), protocol.batch_size)]
    nll, count = 0.0, 0
    per_nll, per_count = [], []
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        inp = torch.stack([ids[b:e] for b, e, _ in batch])
        labels = inp.clone()
        for row, (b, _, first) in enumerate(batch):
            labels[row, : first - b] = -100
        if bos is not None:
            inp = torch.cat([torch.full((len(batch), 1), bos), inp], dim=1)
            labels = torch.cat([torch.full((len(batch), 1), -100), labels], dim=1)
        logits = model(input_ids=inp.to(device)).logits.float()
        # logits[:, j] predicts inp[:, j + 1]; per token, then summed per window and per batch
        token_nll = next_token_nll(logits, labels.to(device)).view(len(batch), -1)
        nll += float(token_nll.sum())
        scored = (labels[:, 1:] != -100).sum(1)
        count += int(scored.sum())
        per_nll.append(token_nll.double().sum(1).cpu())
        per_count.append(scored)
    return WindowScores(math.exp(nll / count), count, torch.cat(per_nll), torch.cat(per_count))


def perplexity(
    model: nn.Module, ids: torch.Tensor, protocol: EvalProtocol, bos: int | None, *, progress: bool = True, desc: str = "perplexity"
) -> tuple[float, int]:
    """exp(mean NLL) over the scored tokens of `ids` (1-D); returns (perplexity, tokens scored)."""
    w = window_scores(model, ids, protocol, bos, progress=progress, desc=desc)
    return w.ppl, w.tokens


def gap_recovered(ppl_dense: float, ppl_sparse: float, ppl_spon: float) -> float:
    """(ppl_sparse - ppl_spon) / (ppl_sparse - ppl_dense): 1 is all of the sparsity gap recovered, 0 none."""
    gap = ppl_sparse - ppl_dense
    return (ppl_sparse - ppl_spon) / gap if gap > 0 else float("nan")


def spread(values: list[float]) -> dict | None:
    """Mean, sample standard deviation, min and max of a figure over repeats (seeds, threshold nudges), over its
    finite values (a gap recovered with no gap to recover is NaN); None with fewer than two."""
    v = [x for x in values if math.isfinite(x)]
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v), "min": min(v), "max": max(v)} if len(v) > 1 else None


def evaluate_variants(
    model: nn.Module, ids: torch.Tensor, protocol: EvalProtocol, bos: int | None, *, progress: bool = True,
    dense_scores: WindowScores | None = None, seed: int = 0,
) -> dict:
    """Perplexity of the dense, sparse and (if it has vectors) sparse+SPON model on the same tokens, each with a 95%
    interval from a paired bootstrap over the evaluation windows (and the gap recovered with its interval).

    dense_scores: the dense model's `window_scores` on these tokens with this protocol, if already known (sweeps).
    """
    mods = sparse_modules(model)
    if not mods:
        raise SponError("the model is not sparsified; load an artifact or calibrate first")
    has_spon = any(m.has_spon for m in mods.values())
    config = getattr(model, "spon_config", None)
    out: dict = {"protocol": protocol.to_dict(), "bos": bos is not None}
    if config is not None:
        out["tokens_sparsified"] = config.describe_tokens()
        out["target_sparsity"] = config.sparsity
    if dense_scores is None:
        with dense(model):
            dense_scores = window_scores(model, ids, protocol, bos, progress=progress, desc="dense")
    scores = {"dense": dense_scores}
    out["ppl_dense"] = dense_scores.ppl
    with without_spon(model), measure_sparsity(model) as sp:
        scores["sparse"] = window_scores(model, ids, protocol, bos, progress=progress, desc="sparse")
    out["ppl_sparse"], out["tokens"] = scores["sparse"].ppl, scores["sparse"].tokens
    out["sparsity_measured"] = sp["weighted"]
    out["sparsity_measured_entries"] = sp["entries"]
    out["has_spon"] = has_spon
    out["gap_recovered"] = None  # no vectors: nothing to recover with
    if has_spon:
        with measure_sparsity(model) as sp_spon:  # SPON restores activations, so more entries pass the thresholds
            scores["spon"] = window_scores(model, ids, protocol, bos, progress=progress, desc="sparse+SPON")
        out["ppl_spon"] = scores["spon"].ppl
        out["sparsity_measured_spon"] = sp_spon["weighted"]
        out["gap_recovered"] = gap_recovered(out["ppl_dense"], out["ppl_sparse"], out["ppl_spon"])
    out["windows"] = int(dense_scores.counts.numel())
    out["ci95"] = paired_bootstrap({k: v.nll for k, v in scores.items()}, dense_scores.counts, seed=seed)
    out["per_window"] = {"tokens": dense_scores.counts.tolist(), "nll": {k: v.nll.tolist() for k, v in scores.items()}}
    out["bootstrap"] = {"samples": BOOTSTRAP_SAMPLES, "unit": "evaluation windows, resampled jointly for all variants",
                        "seed": seed}
    return out

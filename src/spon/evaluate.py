"""Perplexity with a stated protocol, for dense, sparse and sparse+SPON, and the share of the gap recovered."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import SponError
from .sparsify import dense, measure_sparsity, sparse_modules, without_spon

__all__ = ["PRESETS", "EvalProtocol", "bos_token_id", "perplexity", "evaluate_variants", "gap_recovered"]


@dataclass
class EvalProtocol:
    """How perplexity is measured; every report states it."""

    ctx_len: int = 512  # tokens per window, BOS included where the tokenizer adds one
    stride: int = 512  # window start step; < ctx_len scores only the new tokens of each window
    max_tokens: int | None = None  # evaluate on the first this many tokens (None: all)
    batch_size: int = 4  # windows per forward

    def __post_init__(self):
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


def bos_token_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer starts sequences with it (Gemma does; SmolLM2 does not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos if bos is not None and ids and ids[0] == bos else None


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


@torch.no_grad()
def perplexity(
    model: nn.Module, ids: torch.Tensor, protocol: EvalProtocol, bos: int | None, *, progress: bool = True, desc: str = "perplexity"
) -> tuple[float, int]:
    """exp(mean NLL) over the scored tokens of `ids` (1-D); returns (perplexity, tokens scored)."""
    if protocol.max_tokens:
        ids = ids[: protocol.max_tokens]
    body = protocol.ctx_len - (1 if bos is not None else 0)
    if ids.numel() < body + (0 if bos is not None else 1):
        raise SponError(
            f"evaluation text has {ids.numel()} tokens, fewer than one {protocol.ctx_len}-token window; "
            "give more text or a smaller --ctx-len"
        )
    device = next(model.parameters()).device
    wins = _windows(ids.numel(), body, protocol.stride, bos is not None)
    groups: dict[int, list] = {}
    for w in wins:
        groups.setdefault(w[1] - w[0], []).append(w)
    batches = [g[i : i + protocol.batch_size] for g in groups.values() for i in range(0, len(g), protocol.batch_size)]
    nll, count = 0.0, 0
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        inp = torch.stack([ids[b:e] for b, e, _ in batch])
        labels = inp.clone()
        for row, (b, _, first) in enumerate(batch):
            labels[row, : first - b] = -100
        if bos is not None:
            inp = torch.cat([torch.full((len(batch), 1), bos), inp], dim=1)
            labels = torch.cat([torch.full((len(batch), 1), -100), labels], dim=1)
        logits = model(input_ids=inp.to(device)).logits.float()
        # logits[:, j] predicts inp[:, j + 1]
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(device), ignore_index=-100, reduction="sum"
        )
        nll += float(loss)
        count += int((labels[:, 1:] != -100).sum())
    return math.exp(nll / count), count


def gap_recovered(ppl_dense: float, ppl_sparse: float, ppl_spon: float) -> float:
    """(ppl_sparse - ppl_spon) / (ppl_sparse - ppl_dense): 1 is all of the sparsity gap recovered, 0 none."""
    gap = ppl_sparse - ppl_dense
    return (ppl_sparse - ppl_spon) / gap if gap > 0 else float("nan")


def evaluate_variants(
    model: nn.Module, ids: torch.Tensor, protocol: EvalProtocol, bos: int | None, *, progress: bool = True,
    ppl_dense: float | None = None,
) -> dict:
    """Perplexity of the dense, sparse and (if it has vectors) sparse+SPON model on the same tokens.

    ppl_dense: the dense perplexity on these tokens with this protocol, if already known (sweeps).
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
    if ppl_dense is None:
        with dense(model):
            ppl_dense, _ = perplexity(model, ids, protocol, bos, progress=progress, desc="dense")
    out["ppl_dense"] = ppl_dense
    with without_spon(model), measure_sparsity(model) as sp:
        out["ppl_sparse"], out["tokens"] = perplexity(model, ids, protocol, bos, progress=progress, desc="sparse")
    out["sparsity_measured"] = sp["weighted"]
    out["sparsity_measured_entries"] = sp["entries"]
    out["has_spon"] = has_spon
    out["gap_recovered"] = None  # no vectors: nothing to recover with
    if has_spon:
        out["ppl_spon"], _ = perplexity(model, ids, protocol, bos, progress=progress, desc="sparse+SPON")
        out["gap_recovered"] = gap_recovered(out["ppl_dense"], out["ppl_sparse"], out["ppl_spon"])
    return out

"""The one experiment loop behind `demo`, `sweep` and `compare`: load the model and text once, score the dense
model once, then per point (a sparsity, a rule...) start from the dense model, calibrate, train SPON and evaluate
dense / sparse / sparse+SPON on the same held-out tokens. What varies is only the list of points and what each
runner does with a finished point (rows, artifacts, plots)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from spon.evaluation.intervals import paired_bootstrap
from spon.config import SparsityConfig, TrainConfig, opt
from spon.io.data import TextSplits, load_splits, tokenize
from spon.evaluation.evaluate import EvalProtocol, WindowScores, evaluate_variants, window_scores
from spon.io.data import bos_token_id
from spon.serving.machine import machine
from spon.io.models import LoadedModel, ModelArgs, load_model
from spon.sparsity.sparsify import unsparsify_
from spon.pipeline import calibrate_model, train_model

__all__ = ["ModelArgs", "ExperimentConfig", "Session", "open_session", "run_point", "run_points", "window_nll"]


@dataclass
class ExperimentConfig(ModelArgs):
    """What every experiment (demo, sweep, compare) shares."""

    data: str = opt("pydoc", "text: pydoc or stdlib (embedded), wikitext2, c4, or a local file/folder")
    out: str = opt("out", "output folder")
    sparsity: SparsityConfig = opt(factory=SparsityConfig)
    train: TrainConfig = opt(factory=TrainConfig)
    protocol: EvalProtocol = opt(factory=EvalProtocol)
    calib_tokens: int = opt(8192, "calibration tokens for thresholds (32 sequences of 256: thresholds settle well before this)")


@dataclass
class Session:
    """The model, its text and the dense model's perplexity on the held-out tokens, shared by every point."""

    lm: LoadedModel
    splits: TextSplits
    eval_source: dict  # the held-out text scored: {**source, "split": "evaluation"}
    eval_ids: torch.Tensor
    bos: int | None
    dense: WindowScores  # the dense model on the held-out windows
    seconds: dict

    @property
    def ppl_dense(self) -> float:
        return self.dense.ppl

    @property
    def tokens(self) -> int:
        return self.dense.tokens


def open_session(cfg: ExperimentConfig, *, eval_data: str | None = None, progress: bool = True) -> Session:
    """Load the model and text; score the dense model once. eval_data: another corpus's held-out split (cross-domain)."""
    t0 = time.time()
    lm = load_model(cfg.model, cfg.dtype, device_map=cfg.device_map, trust_remote_code=cfg.trust_remote_code)
    splits = load_splits(cfg.data)
    eval_splits = load_splits(eval_data) if eval_data else splits
    bos = bos_token_id(lm.tokenizer)
    eval_ids = tokenize(lm.tokenizer, eval_splits.evaluation)
    t1 = time.time()
    scores = window_scores(lm.model, eval_ids, cfg.protocol, bos, progress=progress, desc="dense")
    return Session(lm, splits, {**eval_splits.source, "split": "evaluation"}, eval_ids, bos, scores,
                   {"load": round(t1 - t0, 1), "dense_eval": round(time.time() - t1, 1)})


def run_point(s: Session, cfg: ExperimentConfig, config: SparsityConfig, *, spon: bool = True, progress: bool = True,
              train: TrainConfig | None = None) -> dict:
    """From the dense model: calibrate `config`, train SPON (unless spon=False), evaluate; returns what happened.

    train: the training config of this point (default cfg.train); its seed also seeds calibration."""
    train = train or cfg.train
    t0 = time.time()
    unsparsify_(s.lm.model)
    calibration = calibrate_model(s.lm, s.splits, config, calib_tokens=cfg.calib_tokens, seed=train.seed, progress=progress)
    t1 = time.time()
    training = train_model(s.lm, s.splits, train, progress=progress) if spon else None
    t2 = time.time()
    metrics = evaluate_variants(s.lm.model, s.eval_ids, cfg.protocol, s.bos, progress=progress, dense_scores=s.dense)
    metrics["data"] = s.eval_source
    t3 = time.time()
    seconds = {"calibrate": round(t1 - t0, 1), "train": round(t2 - t1, 1), "evaluate": round(t3 - t2, 1), "total": round(t3 - t0, 1)}
    return {"calibration": calibration, "training": training, "metrics": metrics, "seconds": seconds}


def run_points(cfg: ExperimentConfig, points: dict[str, SparsityConfig | tuple[SparsityConfig, TrainConfig]],
               on_point: Callable[[Session, str, dict], None], *, spon: bool = True, eval_data: str | None = None,
               progress: bool = True, desc: str = "points") -> Session:
    """Open a session, run every point in order and hand each result to on_point(session, label, result).

    A point is a SparsityConfig (trained with cfg.train) or a (SparsityConfig, TrainConfig) pair (e.g. another seed)."""
    s = open_session(cfg, eval_data=eval_data, progress=progress)
    for label, point in tqdm(points.items(), desc=desc, disable=not progress or len(points) < 2):
        config, train = point if isinstance(point, tuple) else (point, None)
        on_point(s, label, run_point(s, cfg, config, spon=spon, progress=progress, train=train))
    return s


def header(s: Session, cfg: ExperimentConfig, *, spon: bool = True) -> dict:
    """What every experiment's JSON starts with."""
    return {
        "model": s.lm.identity, "data": s.splits.source, "eval_data": s.eval_source, "protocol": cfg.protocol.to_dict(),
        "tokens_sparsified": cfg.sparsity.describe_tokens(), "train": cfg.train.to_dict() if spon else None,
        "calib_tokens": cfg.calib_tokens, "ppl_dense": s.ppl_dense, "tokens": s.tokens, "windows": int(s.dense.counts.numel()),
        "ci95_dense": paired_bootstrap({"dense": s.dense.nll}, s.dense.counts)["ppl_dense"], "dense_seconds": s.seconds["dense_eval"],
        "window_tokens": s.dense.counts.tolist(), "window_nll_dense": s.dense.nll.tolist(),  # rows keep theirs: any pair can be checked
        "rows": [], "machine": machine(),
    }


def window_nll(metrics: dict) -> dict[str, list[float]]:
    """A point's per-window NLL of its sparse (and sparse+SPON) model; the dense one is in the header."""
    return {k: v for k, v in metrics["per_window"]["nll"].items() if k != "dense"}

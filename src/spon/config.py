"""User-facing configuration: what to sparsify and how to train the spontaneous neurons."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from spon.errors import SponError

RULES = ("magnitude", "wina", "cats", "rsparse")  # the peers' selection rules (sparsity/selection.py)
SELECTIONS = ("threshold", "topk")  # a calibrated threshold per layer, or exact per-token top-k

__all__ = ["SparsityConfig", "TrainConfig", "TOKEN_MODES", "SPON_ON", "ALLOCATIONS", "INITS", "LR_SCALES", "opt", "check_sparsity", "check_choices"]

TOKEN_MODES = ("all", "decode", "last")
ALLOCATIONS = ("uniform", "greedy")
INITS = ("zeros", "mean-dropped")
LR_SCALES = ("none", "threshold")
SELECTS = ("kl", "nll")
SPON_ON = {"all": "", "attention": r"(attn|attention)", "mlp": r"(mlp|ffn|feed_forward)"}  # name regex per choice


def opt(default=None, help: str = "", *, factory=None, **cli):
    """A config field with its one-line reason; `help` and `cli` (choices, type, flag, action) also make its CLI flag."""
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SparsityConfig:
    """Which linears are sparsified, how much, and on which tokens."""

    sparsity: float = opt(0.5, "target fraction of each layer's input entries zeroed (the paper's main setting)", type="sparsity")
    tokens: str = opt("all", "which tokens are sparsified: all, decode (single-token steps only; prefill dense) or the last "
                      "fraction of each sequence", choices=TOKEN_MODES)
    last_fraction: float = opt(0.5, "with tokens=last: TEAL's evaluation sparsifies the last half")
    include: str = opt(r"\.\d+\.", "regex: linears inside a numbered block list (decoder layers); never lm_head or "
                       "embeddings (the head: --sparsify-head)")
    exclude: str = opt(r"(^|\.)(lm_head|embed\w*|router)$", "regex: never the output head (see --sparsify-head), embeddings "
                       "or MoE routers (routers and scalar gates are also found by shape: as many outputs as the model "
                       "has experts, or one)")
    sparsify_head: bool = opt(False, "also sparsify the output head (the model's get_output_embeddings, whatever its name) at "
                              "the target: a fifth to a quarter of a small model's weight bytes, at an accuracy cost")
    overrides: dict[str, float] = opt(help="per-layer sparsity for modules whose name matches REGEX, first match wins "
                                      "(REGEX=S, repeatable)", factory=dict, flag="override", type="override")
    rule: str = opt("magnitude", "selection rule: magnitude (TEAL), wina, cats (MLP activations only), rsparse (low-rank "
                    "path for dropped inputs)", choices=RULES)
    selection: str = opt("threshold", "a calibrated threshold per layer, or exact per-token top-k", choices=SELECTIONS)
    allocation: str = opt("uniform", "uniform, or TEAL's greedy per-block allocation (fills overrides per module; "
                          "modules --override names keep their sparsity)",
                          choices=ALLOCATIONS)
    rsparse_budget: float = opt(0.1, "R-Sparse: low-rank factors as a fraction of each weight's size")

    def __post_init__(self):
        check_choices(self)
        if self.sparsify_head and self.rule == "cats":
            raise SponError("CATS sparsifies only the MLP activation; drop --sparsify-head or use another rule")
        if self.allocation == "greedy" and self.rule == "cats":
            raise SponError("greedy allocation spreads sparsity over the linears of a block; CATS sparsifies only the MLP activation")
        if not 0 < self.rsparse_budget <= 1:
            raise SponError(f"rsparse_budget must be in (0, 1], got {self.rsparse_budget}")
        check_sparsity(self.sparsity, "sparsity")
        for pattern, value in self.overrides.items():
            check_sparsity(value, f"override {pattern!r}")
            _compile(pattern)
        if not 0.0 < self.last_fraction <= 1.0:
            raise SponError(f"last_fraction must be in (0, 1], got {self.last_fraction}")
        _compile(self.include)
        _compile(self.exclude)

    def override_for(self, name: str) -> float | None:
        """The sparsity the first matching override gives `name`, or None when no override names it."""
        for pattern, value in self.overrides.items():
            if re.search(pattern, name):
                return value
        return None

    def sparsity_for(self, name: str) -> float:
        value = self.override_for(name)
        return self.sparsity if value is None else value

    def describe_tokens(self) -> str:
        if self.tokens == "last":
            return f"last {self.last_fraction:.0%} of each sequence (and every single-token decode step)"
        return {"all": "all tokens", "decode": "decode steps only (prefill stays dense)"}[self.tokens]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SparsityConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainConfig:
    """Distillation of the spontaneous vectors from the dense model (only the alphas learn)."""

    lr: float = opt(1e-3, "Adam learning rate of the vectors")
    steps: int = opt(60, "optimiser steps; keep-best on validation (see select) guards against overshooting")
    batch_size: int = opt(2, "sequences per step")
    seq_len: int = opt(512, "tokens per training sequence (the evaluation's context length)")
    lr_scale: str = opt("none", "per-layer learning rate: none (one rate for every vector), or threshold (each layer's rate "
                        "times its threshold over the median threshold, so a vector moves in its own input's units)",
                        choices=LR_SCALES)
    warmup: int = opt(5, "linear learning-rate warm-up steps, then cosine decay to lr/10")
    grad_clip: float = opt(1.0, "max global gradient norm of the vectors")
    average: float = opt(0.0, "0: validate and keep the optimiser's vectors; d in (0, 1): an exponential moving average of "
                         "them with decay d (from step 1) is validated and kept instead, against step-to-step noise")
    threshold_jitter: float = opt(0.0, "0: train at the calibrated thresholds; s > 0: each step's forward runs with every "
                                  "threshold times exp(s z), z ~ N(0, 1) per layer (validation at the calibrated ones): vectors "
                                  "trained for nearby masks, not the one")
    eval_every: int = opt(10, "validation scores every this many steps (and at steps 0 and last)")
    select: str = opt("kl", "the validation score that picks the kept step: kl (to the dense model) or nll (next-token loss "
                      "on the validation text); both are recorded either way", choices=SELECTS)
    val_sequences: int = opt(4, "validation sequences of seq_len tokens, held out from training")
    train_sequences: int | None = opt(32, "distinct training sequences, reused over epochs (None: steps x batch, one pass)")
    teacher_topk: int = opt(64, "teacher kept as top-k log-probs + rest mass, computed once; 0 = exact KL, teacher every step")
    init: str = opt("zeros", "starting vectors: zeros, or mean-dropped (E[x - S(x)] per layer, no gradient steps)", choices=INITS)
    spon_on: str = opt("all", "which sparse linears get a trainable vector (ablation; others stay plain sparse)",
                       choices=tuple(SPON_ON))
    neurons: int = opt(0, "0: one input-space vector alpha per layer (SPON); k > 0: k output-space spontaneous neurons (ablation)")
    seed: int = opt(0, "data order, sampling and calibration")

    def __post_init__(self):
        check_choices(self)
        if not 0.0 <= self.average < 1.0:
            raise SponError(f"average must be in [0, 1) (0 turns it off, e.g. 0.9), got {self.average}")
        if not self.threshold_jitter >= 0.0:
            raise SponError(f"threshold_jitter must be 0 (off) or positive (e.g. 0.01), got {self.threshold_jitter}")
        if not self.lr > 0:
            raise SponError(f"learning rate must be positive, got {self.lr}")
        for name in ("steps", "batch_size", "seq_len", "eval_every", "val_sequences"):
            if getattr(self, name) < 1:
                raise SponError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.neurons < 0:
            raise SponError(f"neurons must be >= 0, got {self.neurons}")
        if self.teacher_topk < 0 or (self.train_sequences is not None and self.train_sequences < 1):
            raise SponError("teacher_topk must be >= 0 and train_sequences >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_choices(config) -> None:
    """Every field declared with `choices` (its `opt`) holds one of them; one reader of the declarations, so a new mode
    needs no new check."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices is not None and value not in choices:
            raise SponError(f"unknown {f.name} {value!r}; use one of {', '.join(choices)}")


def check_sparsity(value: float, what: str = "sparsity") -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise SponError(f"{what} must be in [0, 1), got {value}; e.g. 0.5 zeroes half of each input")
    return float(value)


def _compile(pattern: str):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise SponError(f"invalid regular expression {pattern!r}: {e}") from None

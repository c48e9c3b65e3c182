"""SPON training: learn one input vector per sparsified linear by distillation from the dense model."""

from __future__ import annotations

import contextlib
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from spon import distributed as dd
from spon.io.atomic import atomic_file
from spon.config import SPON_ON, TrainConfig
from spon.io.data import sequences
from spon.errors import SponError
from spon.evaluation.evaluate import next_token_nll
from spon.training.alphas import init_alphas_
from spon.training.kl import kl_per_token, kl_topk, topk_teacher
from spon.evaluation.nudge import jittered_thresholds
from spon.sparsity.sparsify import decode_as_sparse_suffix, dense, sparse_modules

__all__ = ["train_spon_", "TrainResult", "Teacher", "validation_kl", "validation_scores", "lr_at", "lr_scales", "spon_parameters_"]


@dataclass
class TrainResult:
    """What training did: validation KL before/after, the step whose alphas were kept, and the history."""

    val_kl_start: float
    val_kl_best: float  # the validation KL of the kept vectors
    best_step: int
    steps_run: int
    kept: str  # "trained", "start" (the starting vectors) or "zeros" (nothing beat zero vectors)
    stopped: str = ""  # why training stopped early, if it did
    train_sequences: int = 0  # distinct training sequences drawn (fewer than asked when the text is short)
    history: list[dict] = field(default_factory=list)
    val_nll_start: float = math.nan  # validation next-token NLL before training and of the kept vectors
    val_nll_best: float = math.nan
    select: str = "kl"  # the score that picked the kept step

    @property
    def best_score(self) -> float:
        """The kept vectors' validation score under `select`."""
        return self.val_nll_best if self.select == "nll" else self.val_kl_best

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr/10 at the last step (step is 1-based)."""
    if step <= config.warmup:
        return config.lr * step / max(1, config.warmup)
    frac = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def spon_parameters_(model: nn.Module, config: TrainConfig) -> list[nn.Parameter]:
    """The tensors training will update: each selected layer's alpha, or (ablation) its k neurons and rates.

    Layers that `config.spon_on` leaves out keep zero vectors. Neurons are created here when asked for:
    output weights ~ N(0, 1/k) (seeded), rates 0, so training starts from plain sparsity.
    """
    pattern = SPON_ON[config.spon_on]
    gen = torch.Generator().manual_seed(config.seed + 2)
    params: list[nn.Parameter] = []
    for name, m in sparse_modules(model).items():
        if pattern and not re.search(pattern, name):
            with torch.no_grad():
                m.alpha.zero_()
            continue
        if config.neurons:
            if m.neurons is None or m.neurons.shape[1] != config.neurons:
                u = torch.randn(m.out_features, config.neurons, generator=gen) / config.neurons**0.5
                m.neurons = nn.Parameter(u.to(m.alpha.device), requires_grad=False)
                m.rates = nn.Parameter(torch.zeros(config.neurons, device=m.alpha.device), requires_grad=False)
            params += [m.neurons, m.rates]
        else:
            params.append(m.alpha)
    if not params:
        raise SponError(f"no sparse layer name matches spon_on={config.spon_on!r} ({pattern}); use spon_on='all'")
    return params


def lr_scales(model: nn.Module, params: list[nn.Parameter], config: TrainConfig) -> list[float]:
    """Each trained tensor's learning-rate factor: 1, or (lr_scale="threshold") its layer's threshold over the median.

    Adam moves every entry by about the learning rate per step whatever the input's scale, while the thresholds of
    one model's layers span two orders of magnitude (Qwen2.5-0.5B: 0.008 to 1.5), and what a vector corrects (the
    dropped entries) is bounded by its threshold. Layers with a zero threshold (nothing dropped) keep factor 1.
    """
    if config.lr_scale == "none" or config.neurons:
        return [1.0] * len(params)
    tau = {id(m.alpha): float(m.threshold) for m in sparse_modules(model).values()}
    mine = [tau.get(id(p), 0.0) for p in params]
    positive = sorted(t for t in tau.values() if t > 0)
    if not positive:
        return [1.0] * len(params)
    ref = positive[len(positive) // 2]
    return [t / ref if t > 0 else 1.0 for t in mine]


def _gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble rows computed process by process (process r holds rows r, r + world, ...) into [n, ...]."""
    world = dd.world_size()
    if world == 1:
        return local
    full = torch.empty(n, *local.shape[1:], dtype=local.dtype)
    for r, part in enumerate(dd.all_gather_variable(local.reshape(-1))):
        full[r::world] = part.view(-1, *local.shape[1:])
    return full


class Teacher:
    """The dense model's output distribution on a fixed set of sequences, computed once.

    With k > 0 each token keeps its top-k log-probs and the log of the rest (k+1 floats and k ids),
    so a training step costs one student forward and backward; with k = 0 the full distribution is
    recomputed at every use (exact KL, one more forward per step).
    """

    def __init__(self, model: nn.Module, seqs: torch.Tensor, k: int, batch_size: int, *, progress: bool = False, desc: str = "teacher"):
        self.model, self.seqs, self.k = model, seqs, k
        self.device = next(model.parameters()).device
        self.cache: tuple[torch.Tensor, ...] = ()  # values [N, T, k], indices [N, T, k], log_rest [N, T]
        if k > 0:
            world, me = dd.world_size(), dd.rank()
            mine = torch.arange(me, len(seqs), world)  # data parallel: each process computes every world-th sequence
            parts: list[tuple[torch.Tensor, ...]] = []
            for rows in tqdm(mine.split(batch_size), desc=desc, disable=not progress, leave=False):
                with torch.no_grad(), dense(model):
                    logits = model(input_ids=seqs[rows].to(self.device)).logits
                parts.append(tuple(t.cpu() for t in topk_teacher(logits, k)))
            local = [torch.cat(ts) for ts in zip(*parts)] if parts else [
                torch.zeros(0, seqs.shape[1], k), torch.zeros(0, seqs.shape[1], k, dtype=torch.long), torch.zeros(0, seqs.shape[1])
            ]
            self.cache = tuple(_gather_rows(t, len(seqs)) for t in local)

    def kl(self, rows: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) for the sequences `rows` (indices into seqs), mean over tokens."""
        if self.k > 0:
            v, i, r = (t[rows].to(self.device) for t in self.cache)
            return kl_topk(v, i, r, student_logits)
        with torch.no_grad(), dense(self.model):
            t_logp = torch.log_softmax(self.model(input_ids=self.seqs[rows].to(self.device)).logits.float(), -1)
        return kl_per_token(t_logp, student_logits)


@torch.no_grad()
def validation_scores(model: nn.Module, teacher: Teacher, batch_size: int) -> dict[str, float]:
    """Mean per-token KL(dense || sparse) and next-token NLL (nats) over the teacher's sequences, one forward."""
    kl = nll = 0.0
    count = 0
    for i in range(0, len(teacher.seqs), batch_size):
        rows = torch.arange(i, min(i + batch_size, len(teacher.seqs)))
        ids = teacher.seqs[rows].to(teacher.device)
        logits = model(input_ids=ids).logits
        kl += float(teacher.kl(rows, logits)) * len(rows)
        nll += float(next_token_nll(logits, ids).mean()) * len(rows)
        count += len(rows)
    return {"kl": kl / count, "nll": nll / count}


def validation_kl(model: nn.Module, teacher: Teacher, batch_size: int) -> float:
    """Mean per-token KL(dense || sparse) over the teacher's sequences."""
    return validation_scores(model, teacher, batch_size)["kl"]


def training_sequences(train_ids: torch.Tensor, config: TrainConfig, *, bos: int | None = None) -> torch.Tensor:
    """The distinct training sequences [N, seq_len] `train_spon_` draws from a token stream (shuffled by the seed)."""
    n_train = config.train_sequences or config.steps * config.batch_size
    seqs = sequences(train_ids, config.seq_len, bos=bos)
    return seqs[torch.randperm(len(seqs), generator=torch.Generator().manual_seed(config.seed))[:n_train]]


INIT_TOKENS = 8192  # tokens the training-free start (--init mean-dropped) averages over


def init_sequences(train_seqs: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, ...]:
    """The batches of training sequences `--init mean-dropped` measures E[x - S(x)] on (the first INIT_TOKENS)."""
    return train_seqs[: max(1, INIT_TOKENS // config.seq_len)].split(config.batch_size)


def train_spon_(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    bos: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the alphas of every `SparseLinear` in place; every other weight stays frozen.

    train_ids, val_ids: 1-D token streams (calibration and held-out validation parts); with `bos` every
    sequence starts with that token, as evaluation windows do.
    The alphas with the lowest validation KL are kept, zero vectors and the starting ones included,
    so training never leaves the model worse on validation than plain sparsity.

    checkpoint: a file written (atomically, by process 0) every `checkpoint_every` steps with the vectors,
    optimiser state, step, data position and RNG state; `resume=True` continues from it to the same result
    as an uninterrupted run. Under torch.distributed (torchrun) each process takes an equal share of every
    batch and the gradients are averaged, which equals one process on the whole batch.
    on_step(step) is called after every optimiser step.
    """
    config = config or TrainConfig()
    mods = sparse_modules(model)
    if not mods:
        raise SponError("the model has no sparse layers; call sparsify_ and calibrate_ before training SPON")
    if any(m.folded for m in mods.values()):
        raise SponError(
            "this model's SPON vectors are already folded into its biases (an exported model, or fold_ ran); train from the "
            "unfolded artifact instead (load_artifact / spon train --artifact ART on the base model)"
        )
    train_seqs = training_sequences(train_ids, config, bos=bos)
    val_seqs = sequences(val_ids, config.seq_len, bos=bos)[: config.val_sequences]
    if len(train_seqs) < 1 or len(val_seqs) < 1:
        raise SponError(
            f"too little text to train SPON: need at least one {config.seq_len}-token sequence for training and "
            f"for validation, got {train_ids.numel()} and {val_ids.numel()} tokens; use more text or a smaller seq_len"
        )
    model.eval()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        if config.init == "mean-dropped":
            init_alphas_(model, init_sequences(train_seqs, config), progress=progress)
        alphas = spon_parameters_(model, config)
        val = Teacher(model, val_seqs, config.teacher_topk, config.batch_size, progress=progress, desc="teacher (validation)")
        train = Teacher(model, train_seqs, config.teacher_topk, config.batch_size, progress=progress, desc="teacher (training)")
        ckpt = _Checkpointer(Path(checkpoint), checkpoint_every, config, mods) if checkpoint else None
        state = ckpt.load() if ckpt and resume else None
        if resume and state is None:
            raise SponError(f"nothing to resume: no checkpoint at {checkpoint}; start without resume")
        with decode_as_sparse_suffix(model):  # token mode "decode": prompt dense, continuation sparse, as generation runs
            result = _optimise(model, alphas, train, val, config, progress and dd.is_main(), ckpt, state, on_step)
    finally:
        for p, req in frozen:
            p.requires_grad_(req)
        for m in mods.values():
            for p in (m.alpha, m.neurons, m.rates):
                if p is not None:
                    p.requires_grad_(False)
    result.train_sequences = len(train_seqs)
    return result


CHECKPOINT_VERSION = 1


class _Checkpointer:
    """Training state on disk: written atomically by process 0, so a kill leaves the previous one whole."""

    def __init__(self, path: Path, every: int, config: TrainConfig, mods: dict):
        if every < 1:
            raise SponError(f"checkpoint_every must be at least 1, got {every}")
        self.path, self.every, self.config, self.mods = path, every, config, mods

    def _identity(self) -> dict:
        return {"config": self.config.to_dict(), "modules": {n: [m.out_features, m.in_features] for n, m in self.mods.items()},
                "world_size": dd.world_size()}

    def save(self, step: int, pos: int, alphas, opt, best_state, result: "TrainResult", ema=None) -> None:
        if not dd.is_main():
            return
        state = {
            "version": CHECKPOINT_VERSION, **self._identity(), "step": step, "pos": pos,
            "params": [a.detach().cpu().clone() for a in alphas], "optimizer": opt.state_dict(),
            "best_state": [b.cpu() for b in best_state], "result": result.to_dict(),
            "ema": [e.cpu() for e in ema] if ema is not None else [],
            "thresholds": {n: float(m.threshold) for n, m in self.mods.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            torch.save(state, tmp)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and plain containers only
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:  # truncated or foreign file
            raise SponError(f"cannot read checkpoint {self.path} ({type(e).__name__}); delete it and train again") from None
        if state.get("version") != CHECKPOINT_VERSION:
            raise SponError(f"checkpoint {self.path} has format {state.get('version')}, this spon reads {CHECKPOINT_VERSION}")
        mine = self._identity()
        for key in ("config", "modules", "world_size"):
            if state.get(key) != mine[key]:
                raise SponError(
                    f"checkpoint {self.path} was written with another {key.replace('_', ' ')} than this run; "
                    "resume with the same options and processes, or delete the checkpoint"
                )
        return state


def _snapshot(alphas) -> list[torch.Tensor]:
    """Detached copies of the vectors' current values."""
    return [a.detach().clone() for a in alphas]


def _assign_(alphas, values) -> None:
    """Write `values` into the vectors in place, outside autograd."""
    with torch.no_grad():
        for a, v in zip(alphas, values):
            a.copy_(v)


def _average_(ema: list[torch.Tensor] | None, alphas, decay: float) -> list[torch.Tensor] | None:
    """The exponential moving average of the vectors after one more step (None when not averaging)."""
    if not decay:
        return None
    with torch.no_grad():
        if ema is None:
            return _snapshot(alphas)
        for e, a in zip(ema, alphas):
            e.mul_(decay).add_(a.detach(), alpha=1.0 - decay)
    return ema


@contextlib.contextmanager
def _holding(alphas, values: list[torch.Tensor] | None):
    """The vectors hold `values` inside the block (nothing changes when None), their own values again after it."""
    if values is None:
        yield
        return
    own = _snapshot(alphas)
    _assign_(alphas, values)
    try:
        yield
    finally:
        _assign_(alphas, own)


def _optimise(model, alphas, train: Teacher, val: Teacher, config: TrainConfig, progress: bool,
              ckpt: _Checkpointer | None = None, state: dict | None = None, on_step=None) -> TrainResult:
    world = dd.world_size()
    if config.batch_size % world:
        raise SponError(f"batch_size {config.batch_size} must be a multiple of the {world} processes")
    if state is not None:
        return _run_steps(model, alphas, train, val, config, progress, ckpt, on_step, resume=state)
    start = _snapshot(alphas)
    first = validation_scores(model, val, config.batch_size)
    best_state, best, kept = start, first, "start"
    if not any(bool(a.any()) for a in start):
        kept = "zeros"
    else:  # a non-zero start must also beat zero vectors
        with torch.no_grad():
            for a in alphas:
                a.zero_()
        zero = validation_scores(model, val, config.batch_size)
        if zero[config.select] <= best[config.select]:
            best_state, best, kept = _snapshot(alphas), zero, "zeros"
        _assign_(alphas, start)
    result = TrainResult(val_kl_start=first["kl"], val_kl_best=best["kl"], best_step=0, steps_run=0, kept=kept,
                         val_nll_start=first["nll"], val_nll_best=best["nll"], select=config.select)
    result.history.append({"step": 0, "val_kl": first["kl"], "val_nll": first["nll"]})
    return _run_steps(model, alphas, train, val, config, progress, ckpt, on_step, result=result, best_state=best_state)


def _jitter(model: nn.Module, config: TrainConfig, step: int):
    """This step's thresholds: as calibrated, or jittered (`threshold_jitter`) from a generator seeded by the seed and the
    step, so a resumed run draws what an uninterrupted one does, in every process alike."""
    if not config.threshold_jitter:
        return contextlib.nullcontext()
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    return jittered_thresholds(model, config.threshold_jitter, gen)


def _run_steps(model, alphas, train, val, config, progress, ckpt, on_step, *, result=None, best_state=None, resume=None):
    world, me = dd.world_size(), dd.rank()
    for a in alphas:
        a.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [a], "scale": f} for a, f in zip(alphas, lr_scales(model, alphas, config))],
                           lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed + 1)
    order = torch.randperm(len(train.seqs), generator=gen)
    pos, first = 0, 1
    ema: list[torch.Tensor] | None = None
    if resume is not None:
        _assign_(alphas, resume["params"])
        with torch.no_grad():
            for name, m in ckpt.mods.items():
                m.threshold.fill_(resume["thresholds"][name])
        opt.load_state_dict(resume["optimizer"])
        best_state = [b.to(a.device) for a, b in zip(alphas, resume["best_state"])]
        result = TrainResult(**resume["result"])
        ema = [e.to(a.device) for a, e in zip(alphas, resume["ema"])] if resume.get("ema") else None
        pos, first = resume["pos"], resume["step"] + 1  # every draw is from seeded generators: no global RNG to restore
    bar = tqdm(range(first, config.steps + 1), desc="training SPON", disable=not progress, initial=first - 1, total=config.steps)
    for step in bar:
        rows = order[torch.arange(pos, pos + config.batch_size) % len(order)]  # wraps into the next epoch
        pos = (pos + config.batch_size) % len(order)
        rows = rows[me::world]  # this process's share of the global batch
        with _jitter(model, config, step):  # the masks are fixed in the forward: backward needs no thresholds
            logits = model(input_ids=train.seqs[rows].to(train.device)).logits
        loss = train.kl(rows, logits)
        finite = torch.tensor([float(torch.isfinite(loss))])
        dd.all_reduce_mean_([finite])
        if float(finite) < 1.0:
            result.stopped = f"non-finite loss at step {step}; kept the vectors of step {result.best_step} ({result.kept})"
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, config) * g["scale"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dd.all_reduce_mean_([a.grad for a in alphas if a.grad is not None])
        torch.nn.utils.clip_grad_norm_(alphas, config.grad_clip)
        opt.step()
        ema = _average_(ema, alphas, config.average)
        result.steps_run = step
        mean_loss = loss.detach().reshape(1).clone()
        dd.all_reduce_mean_([mean_loss])
        record = {"step": step, "loss": float(mean_loss), "lr": lr_at(step, config)}
        if step % config.eval_every == 0 or step == config.steps:
            with _holding(alphas, ema):  # the averaged vectors, when averaging, are the ones validated and kept
                v = validation_scores(model, val, config.batch_size)
                if v[config.select] < result.best_score:
                    result.val_kl_best, result.val_nll_best, result.best_step, result.kept = v["kl"], v["nll"], step, "trained"
                    best_state = _snapshot(alphas)
            record["val_kl"], record["val_nll"] = v["kl"], v["nll"]
        result.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", best_val=f"{result.best_score:.4f}")
        if ckpt is not None and (step % ckpt.every == 0) and step < config.steps:
            ckpt.save(step, pos, alphas, opt, best_state, result, ema)
        if on_step is not None:
            on_step(step)
    _assign_(alphas, best_state)
    return result

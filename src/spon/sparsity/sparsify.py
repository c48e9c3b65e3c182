"""The in-place transform `sparsify_` and the switches around it (`dense`, `measure_sparsity`)."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from spon.config import SparsityConfig
from spon.errors import SponError
from spon.sparsity.experts import expert_shares, fuse_experts_, unfuse_experts_
from spon.sparsity.sparse_activation import MLP_ACTIVATION, SparseActivation
from spon.sparsity.swap import Restorable, set_submodule
from spon.sparsity.sparse_linear import SelectionRule, SparseLinear, is_linear, linear_shape

__all__ = [
    "sparsify_", "unsparsify_", "dense_block_weights", "is_router", "apply_rule", "output_head", "decode_as_sparse_suffix", "set_attr", "target_linears", "sparse_modules", "sparse_activations", "dense", "without_spon", "measure_sparsity",
]


def target_linears(model: nn.Module, config: SparsityConfig) -> dict[str, nn.Module]:
    """The linear modules (`nn.Linear`, or GPT-2's `Conv1D`) that `config` selects, by qualified name (decoder-block linears by default)."""
    include, exclude = re.compile(config.include), re.compile(config.exclude)
    experts = expert_shares(model)  # unfused experts' layers: experts by construction, whatever their shape
    found = {
        name: mod
        for name, mod in model.named_modules()
        if is_linear(mod) and include.search(name) and not exclude.search(name)
        and (name in experts or not is_router(mod, model))
    }
    if config.sparsify_head:  # found by role, not by name: lm_head, embed_out, ...
        head = output_head(model)
        if head is None or not is_linear(head[1]):
            raise SponError("this model has no linear output head (get_output_embeddings) to sparsify; drop --sparsify-head")
        found[head[0]] = head[1]
    return found


EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def is_router(linear: nn.Module, model: nn.Module) -> bool:
    """A mixture of experts' router or a scalar gate, found by shape whatever its name (Mixtral's and Qwen2-MoE's are
    called `gate`): its outputs are the model's expert count, or one. Its input picks the experts, and its weights are
    a sliver of the block's: it stays dense (TEAL's protocol leaves routing alone)."""
    out = linear_shape(linear)[0]
    return out == 1 or out in expert_counts(model)


def expert_counts(model: nn.Module) -> set[int]:
    """The expert counts the model's config gives (above one), in it or a config it holds: a vision-language model's
    text config, DBRX's `ffn_config`."""
    config = getattr(model, "config", None)
    if config is None:
        return set()
    configs = [config, *(v for v in vars(config).values() if hasattr(v, "to_dict"))]
    text = getattr(config, "get_text_config", None)
    if callable(text):
        configs.append(text())
    return {n for c in configs for key in EXPERT_COUNTS if isinstance(n := getattr(c, key, None), int) and n > 1}


def output_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The model's output head (`get_output_embeddings`, whatever its name) with its qualified name; None without one."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    name = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    return None if name is None else (name, head)


def sparse_modules(model: nn.Module) -> dict[str, SparseLinear]:
    """Every `SparseLinear` of a sparsified model, by qualified name."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SparseLinear)}


def sparse_activations(model: nn.Module) -> dict[str, SparseActivation]:
    """Every `SparseActivation` (CATS) of a sparsified model, by qualified name."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SparseActivation)}


def _switchable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (SparseLinear, SparseActivation))]


@torch.no_grad()
def apply_rule(model: nn.Module, config: SparsityConfig) -> None:
    """Give every sparse layer its rule state (WINA column norms, R-Sparse low-rank factors, top-k counts) and, for
    CATS, wrap the MLP activations; the one place rule state is set."""
    from spon.sparsity.selection import column_norms, keep_count, low_rank

    for name, m in sparse_modules(model).items():
        state: dict = {}
        if config.rule == "wina":
            state["score_scale"] = column_norms(m.matrix).to(m.weight.device)
        if config.rule == "rsparse":
            u, v = low_rank(m.matrix, config.rsparse_budget)
            state["lowrank_u"], state["lowrank_v"] = u.to(m.weight.device), v.to(m.weight.device)
        if config.selection == "topk" and config.rule != "cats":
            state["keep"] = keep_count(m.in_features, config.sparsity_for(name))
        m.rule = SelectionRule(config.rule, **state)
    if config.rule == "cats":
        for name, act in list(model.named_modules()):
            if MLP_ACTIVATION.search(name) and not isinstance(act, SparseActivation):
                set_submodule(model, name, SparseActivation(act, config.tokens, config.last_fraction))
        acts = sparse_activations(model)
        if not acts:
            raise SponError(
                f"CATS needs the MLP activation modules (mlp.act_fn / mlp.act) of {type(model).__name__}; none found"
            )
        for m in sparse_modules(model).values():
            m.threshold.fill_(0.0)  # only the zeros CATS makes are skipped (and counted)
        for name, act in acts.items():
            act.threshold = act.threshold.to(next(model.parameters()).device)
            act.topk_sparsity = config.sparsity_for(name) if config.selection == "topk" else None


def sparsify_(model: nn.Module, config: SparsityConfig | None = None) -> dict[str, SparseLinear]:
    """Swap the selected linears of `model` for `SparseLinear` wrappers, in place.

    Thresholds start at -1 (nothing dropped) until `calibrate_` sets them. Returns the new modules by name.
    Calling it again on a sparsified model only updates the token mode.
    """
    config = config or SparsityConfig()
    existing = sparse_modules(model)
    if existing:
        for mod in existing.values():
            mod.tokens, mod.last_fraction = config.tokens, config.last_fraction
        return existing
    unfused = unfuse_experts_(model)  # transformers 5's 3-D expert weights as per-expert linears (`experts`)
    targets = target_linears(model, config)
    fuse_experts_(model, [n for n in unfused if not any(t.startswith(n + ".") for t in targets)])  # none selected
    if not targets:
        raise SponError(
            f"no nn.Linear inside the decoder blocks of {type(model).__name__} matched include={config.include!r}; "
            "this model has no sparsifiable linears (pass an --include pattern that names them)"
        )
    for name, lin in targets.items():
        set_submodule(model, name, SparseLinear.from_linear(lin, config.tokens, config.last_fraction))
    apply_rule(model, config)
    model.spon_config = config
    _warn_dense_share(model, config)
    return sparse_modules(model)


def dense_block_weights(model: nn.Module, config: SparsityConfig) -> tuple[dict[str, int], int]:
    """Weights inside the decoder blocks (parameters of two or more dimensions whose name `config.include` matches)
    that no sparse layer reads, by the module holding them, with the number of block weights in all: e.g. the fused
    expert tensors of a mixture-of-experts block in transformers 5 (`MixtralExperts`), which are not linear modules."""
    include, exclude = re.compile(config.include), re.compile(config.exclude)
    sparse = {id(p) for m in sparse_modules(model).values() for p in (m.weight,)}
    dense: dict[str, int] = {}
    total = 0
    for name, p in model.named_parameters():
        module = name.rpartition(".")[0]
        if p.dim() < 2 or not include.search(name) or exclude.search(module):
            continue
        total += p.numel()
        if id(p) not in sparse:
            dense[module] = dense.get(module, 0) + p.numel()
    return dense, total


def _warn_dense_share(model: nn.Module, config: SparsityConfig, limit: float = 0.1) -> None:
    """Say so when more than `limit` of the decoder blocks' weights stay dense (modules that are not sparse linears)."""
    dense, total = dense_block_weights(model, config)
    share = sum(dense.values()) / total if total else 0.0
    if share > limit:
        by_kind: dict[str, int] = {}
        for n, count in dense.items():
            kind = type(model.get_submodule(n)).__name__
            by_kind[kind] = by_kind.get(kind, 0) + count
        kinds = sorted(by_kind, key=by_kind.get, reverse=True)
        warnings.warn(
            f"spon: {share:.0%} of the decoder blocks' weights stay dense, in modules that are not sparse linears "
            f"({', '.join(kinds)}; e.g. {max(dense, key=dense.get)}): the sparsity, its speed-up and the measured "
            "sparsity cover only the rest", stacklevel=3)


def unsparsify_(model: nn.Module) -> nn.Module:
    """Put plain `nn.Linear` modules back (dropping thresholds, alphas and folded biases), and fused experts."""
    for name, mod in sparse_modules(model).items():
        set_submodule(model, name, mod.to_linear())
    for name, act in sparse_activations(model).items():
        set_submodule(model, name, act.act)
    for name, head in [(n, m) for n, m in model.named_modules() if isinstance(m, Restorable)]:
        set_submodule(model, name, head.to_linear())
    fuse_experts_(model)
    if hasattr(model, "spon_config"):
        del model.spon_config
    return model


@contextlib.contextmanager
def set_attr(mods: list[nn.Module], attr: str, value) -> Iterator[None]:
    """Set `attr` on every module for the block, then put each one's own value back."""
    before = [getattr(m, attr) for m in mods]
    for m in mods:
        setattr(m, attr, value)
    try:
        yield
    finally:
        for m, b in zip(mods, before):
            setattr(m, attr, b)


@contextlib.contextmanager
def dense(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this block the model computes exactly as the dense original (no sparsity, no SPON)."""
    with set_attr(_switchable(model), "sparse", False):
        yield model


@contextlib.contextmanager
def measure_sparsity(model: nn.Module) -> Iterator[dict]:
    """Count zeroed input entries while the block runs; the dict is filled on exit.

    `weighted` is the fraction of weight columns skipped (each layer's zeros weighted by its out_features),
    the quantity that sets the ideal decode speed-up; `entries` is the plain fraction of zeroed entries. `usage`: the
    share of the tokens that reached each layer (1 for every layer of a dense block; a mixture of experts' expert
    layers see only the tokens routed to them), relative to the layer that saw the most.
    """
    mods = sparse_modules(model)
    acts = sparse_activations(model)
    for m in [*mods.values(), *acts.values()]:
        m.stats = [0.0, 0.0]
    result: dict = {}
    try:
        yield result
    finally:
        zeros = sum(m.stats[0] for m in mods.values())
        total = sum(m.stats[1] for m in mods.values())
        wz = sum(m.stats[0] * m.out_features for m in mods.values())
        wt = sum(m.stats[1] * m.out_features for m in mods.values())
        result["entries"] = zeros / total if total else 0.0
        result["weighted"] = wz / wt if wt else 0.0
        result["per_layer"] = {n: (m.stats[0] / m.stats[1] if m.stats[1] else 0.0) for n, m in mods.items()}
        rows = {n: m.stats[1] / m.in_features for n, m in mods.items()}
        most = max(rows.values(), default=0.0)
        result["usage"] = {n: r / most if most else 0.0 for n, r in rows.items()}
        if acts:  # CATS: the fraction of MLP activation channels zeroed
            za, ta = sum(a.stats[0] for a in acts.values()), sum(a.stats[1] for a in acts.values())
            result["activations"] = za / ta if ta else 0.0
        for m in [*mods.values(), *acts.values()]:
            m.stats = None


@contextlib.contextmanager
def without_spon(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this block the model is plain sparse: alphas read as zero and folded biases are set aside."""
    mods = list(sparse_modules(model).values())
    saved = [(m.alpha.detach().clone(), m.folded_bias, m.neurons) for m in mods]
    with torch.no_grad():  # in place and versioned, so prepared decode steps see the change
        for m in mods:
            m.alpha.zero_()
            m.folded_bias = m.neurons = None
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, (alpha, fb, neurons) in zip(mods, saved):
                m.alpha.copy_(alpha)
                m.folded_bias, m.neurons = fb, neurons


@contextlib.contextmanager
def decode_as_sparse_suffix(model: nn.Module, fraction: float | None = None) -> Iterator[nn.Module]:
    """Layers in token mode "decode" sparsify the last `fraction` of each sequence inside this block.

    A generation whose prompt is prefilled dense and whose new tokens are decoded sparse computes, position by
    position, what one forward with the prompt dense and the rest sparse computes; so this is how decode mode
    is trained and measured on whole sequences. fraction: default each layer's `last_fraction`.
    """
    mods = [m for m in sparse_modules(model).values() if m.tokens == "decode"]
    saved = [(m.tokens, m.last_fraction) for m in mods]
    for m in mods:
        m.tokens, m.last_fraction = "last", fraction or m.last_fraction
    try:
        yield model
    finally:
        for m, (tokens, last) in zip(mods, saved):
            m.tokens, m.last_fraction = tokens, last

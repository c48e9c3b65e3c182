"""Serving: prepare a sparsified model for fast batch-1 decoding, and switch the kernels off to compare.

After `prepare_decode_(model)` every `SparseLinear` keeps its weight input-major ([in, out], each input's
weights one contiguous row); single-token forwards go through the sparse GEMV kernel (CPU: C/OpenMP;
GPU: Triton), and prefill (several tokens) through a dense matmul on the masked input, on a transposed
view of the same storage, so the weights are not held twice. The output head becomes a `DecodeHead`
(for single tokens the faster, timed here, of our dense GEMV kernel and torch's on the weight as stored). Only layers whose rule is a plain threshold
(magnitude, CATS's down projection) take the kernel; WINA, top-k and R-Sparse layers stay on the masked
matmul, and `decode_backends` says which layer uses what.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from spon.serving.decode_head import DecodeHead
from spon.sparsity.experts import ExpertLinears
from spon.training.fold import fold_
from spon.sparsity.swap import set_submodule
from spon.sparsity.sparsify import output_head, set_attr, sparse_modules

__all__ = [
    "prepare_decode_", "compile_decode_", "set_attention", "attention_of", "warm_guards", "masked_dense", "decode_backend", "decode_backends", "head_path", "head_on_huge_pages", "layers_on_huge_pages", "siblings", "SiblingCall", "DecodeState", "input_major",
]


def input_major(mod) -> torch.Tensor:
    """A `SparseLinear`'s weight as [in, out] (contiguous once `prepare_decode_` ran)."""
    return mod.matrix.t()


class DecodeState:
    """A prepared layer's decode state: whether single tokens take the kernel, and its prepared step.

    The step (bias in float32, threshold rounded, buffers, packed arguments) is built on the first call and
    again only when what it was built from changed: the threshold, bias or vectors (in place: tensor
    versions; reassigned: identity), the weight's storage (a `model.to(...)` moves it), or the input dtype.
    Before any foreign call the weight must be input-major on the input's device: rows of contiguous columns on the
    CPU (`kernels.cpu.rows_readable`: alone, or its columns of its siblings' rows), contiguous elsewhere.
    """

    __slots__ = ("use_kernel", "spon_free", "plan", "siblings", "_key", "_versions")

    def __init__(self, use_kernel: bool = True, spon_free: bool = True):
        self.use_kernel = use_kernel
        self.spon_free = spon_free  # no unfolded vectors when prepared: what a compiled step may assume
        self.plan = None
        self.siblings: SiblingCall | None = None  # set by prepare_decode_ for layers side by side with others
        self._key: tuple | None = None
        self._versions: tuple = ()

    def fresh(self) -> "DecodeState":
        """The same switch without the prepared step (copies and pickles must not share raw pointers)."""
        return DecodeState(self.use_kernel, self.spon_free)

    def step(self, mod, x: torch.Tensor) -> torch.Tensor | None:
        """W S(x) + bias for one token through the kernel; None: this layer or input takes the plain path."""
        if not self.use_kernel or not mod.rule.plain:
            return None
        if self.siblings is not None:
            y = self.siblings.output(mod, x)
            if y is not None:
                return y
        bias = mod.folded_bias if mod.folded else mod.bias
        key = (x.dtype, x.device, mod.weight.data_ptr(), mod.threshold, mod.alpha, bias, mod.neurons)  # no view per call
        versions = (mod.threshold._version, mod.alpha._version, 0 if bias is None else bias._version)
        if self._key is None or any(a is not b for a, b in zip(key[3:], self._key[3:])) or key[:3] != self._key[:3] \
                or versions != self._versions:
            self._key, self._versions = key, versions
            self.plan = self._build(mod, input_major(mod), bias, x)
        if self.plan is None:
            return None
        return self.plan(x.reshape(-1)).view(*x.shape[:-1], mod.out_features)

    @staticmethod
    def _build(mod, wt: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor):
        if mod.unfolded_vectors:
            return None  # the plain path adds them
        from spon.serving.kernels.cpu import rows_readable

        laid_out = rows_readable(wt) if wt.device.type == "cpu" else wt.is_contiguous()
        if wt.device != x.device or not laid_out or (bias is not None and bias.device != x.device):
            return None  # moved or re-laid-out since prepare_decode_: never hand a kernel a foreign pointer
        from spon.serving.kernels import GemvPlan

        return GemvPlan(wt, bias, float(mod.threshold), x.dtype)


class SiblingCall:
    """Layers whose weights `prepare_decode_` laid side by side (q/k/v; gate/up), outside compiled graphs: the first
    one's single-token call runs the whole group through one `torch.ops.spon.sparse_gemv_multi` call (one row per
    kept input, as the compiled graph's grouped call reads them) and the others take their output from it while the
    input is the same tensor, unchanged; called alone, a layer would read a strided part of every row. Where a member
    cannot take the kernel (unfolded vectors, another rule, a switch off) each layer goes its own way."""

    __slots__ = ("mods", "_x", "_version", "_ys", "_state", "_usable", "_args")

    def __init__(self, mods: list):
        self.mods = mods
        self._x, self._version, self._ys = None, -1, None
        self._state, self._usable, self._args = None, False, ()

    def usable(self) -> bool:
        """Whether every member takes the kernel now: decided again (with the operator's arguments) only when a switch,
        rule, weight, threshold, vector or bias changed (flags, versions and pointers by value, objects by identity)."""
        state = [(m.decode.use_kernel, m.rule.plain, m.alpha._version, m.weight.data_ptr(), m.threshold, m.rule,
                  m.bias, m.folded_bias, m.neurons) for m in self.mods]
        if self._state is None or any(a[:4] != b[:4] or any(x is not y for x, y in zip(a[4:], b[4:]))
                                      for a, b in zip(state, self._state)):
            self._state = state
            self._usable = all(m.decode.use_kernel and m.rule.plain and not m.unfolded_vectors for m in self.mods)
            self._args = ([input_major(m) for m in self.mods], [m.folded_bias if m.folded else m.bias for m in self.mods],
                          [m.threshold for m in self.mods])  # the operator's arguments: views, read at each call
        return self._usable

    def output(self, mod, x: torch.Tensor) -> torch.Tensor | None:
        """mod's W S(x) + bias, computed with its siblings'; None: the plain or single-layer path."""
        if mod is self.mods[0] or self._x is not x or self._version != x._version:
            self._x = self._ys = None
            if not self.usable():
                return None
            self._ys = torch.ops.spon.sparse_gemv_multi(x, *self._args)
            self._x, self._version = x, x._version
        return self._ys[next(i for i, m in enumerate(self.mods) if m is mod)]


@torch.no_grad()
def prepare_decode_(model: nn.Module, *, fold: bool = True, head: str = "auto", huge_pages: bool = True,
                    fuse_siblings: bool = True) -> nn.Module:
    """Lay out each sparse layer's weight input-major for the decode kernel, in place.

    fold: first fold trained SPON vectors into the biases (exact; zero cost at inference), so every
    layer can take the kernel. Safe to call twice.
    head: how the output head computes one token: "kernel" (our dense GEMV), "torch" (torch's), or "auto" (whichever
    `DecodeHead.choose_path` times faster on this weight here; which one wins differs between hosts).
    huge_pages: where the system grants transparent huge pages, lay the sparse layers' input-major weights out in one
    huge-page arena (`huge_pages.huge_slices`) and move the output head's weight (with the embeddings it is tied to)
    onto such pages (`huge_pages.move_to_huge_pages_`): the GEMVs stream them faster from there.
    fuse_siblings: on the CPU, layers that read the same input (`siblings`: q/k/v, gate/up) keep their weights side by
    side in one buffer, each kept input's weights for all of them one contiguous row, which a grouped call
    (`compile_decode_`'s graph pass) reads at once; each layer's weight is a view of its columns.
    """
    from spon.serving.kernels import op  # noqa: F401  registers torch.ops.spon.sparse_gemv for compiled steps

    mods = sparse_modules(model)
    if fold and any(m.unfolded_vectors for m in mods.values()):
        fold_(model)
    todo = [m for m in mods.values() if m.decode is None]
    tied = _tied_to_embeddings(model, todo)
    for group, home in _homes(model, todo, huge_pages, fuse_siblings):
        if home is None:  # laid out on its own, as torch allocates (GPT-2's Conv1D stores [in, out] already)
            m = group[0]
            if not m.transposed:
                m.weight = nn.Parameter(input_major(m).contiguous().t(), requires_grad=False)  # a view: prefill reads it too
        else:
            start = 0
            for m in group:  # each layer's weight: its columns of the group's rows
                cols = home[:, start:start + m.out_features]
                cols.copy_(input_major(m))
                m.weight = nn.Parameter(cols if m.transposed else cols.t(), requires_grad=False)
                start += m.out_features
        call = SiblingCall(group) if len(group) > 1 else None
        for m in group:
            m.decode = DecodeState(spon_free=not m.unfolded_vectors)
            m.decode.siblings = call
    if tied is not None:  # the embeddings read the re-laid weight too (a strided view: one row per token), so the
        tied[0].weight = tied[1].weight  # old copy is freed rather than kept for the lookup alone
    _swap_head(model, head, huge_pages)
    return model


def _tied_to_embeddings(model: nn.Module, layers: list) -> tuple[nn.Module, nn.Module] | None:
    """(input embeddings, layer) when a layer about to be re-laid shares its weight with the input embeddings: a head
    sparsified on request (`SparsityConfig.sparsify_head`) of a tied model; else None."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    return next(((emb, m) for m in layers if weight is not None and m.weight is weight), None)


def siblings(model: nn.Module, mods: list | None = None) -> list[list]:
    """The sparse layers grouped by the input they read (a block's q/k/v, its gate/up; every other layer alone), in
    the order a forward calls them: found by one single-token forward with hooks, not per architecture. Only layers on
    the CPU with one dtype, a plain threshold rule and the same input width share a group; where the forward fails,
    each layer is alone."""
    mods = list(sparse_modules(model).values()) if mods is None else mods
    seen: dict[int, list] = {}  # input id -> the layers that read it, in call order (and inputs in first-call order)
    called: set[int] = set()
    inputs: list = []  # held, so no later tensor takes a freed one's id

    def hook(mod, args):
        if id(mod) not in called:
            called.add(id(mod))
            inputs.append(args[0])
            seen.setdefault(id(args[0]), []).append(mod)

    handles = [m.register_forward_pre_hook(hook) for m in mods]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    except Exception:  # noqa: BLE001  (any model a forward cannot run this way: no groups, nothing lost)
        return [[m] for m in mods]
    finally:
        for h in handles:
            h.remove()
    groups = []
    for group in seen.values():
        m = group[0]
        alike = all(g.weight.device.type == "cpu" and g.weight.dtype == m.weight.dtype and g.in_features == m.in_features
                    and g.rule.plain for g in group)
        groups.extend([group] if alike else [[g] for g in group])
    return groups + [[m] for m in mods if id(m) not in called]  # layers the forward did not reach


@torch.no_grad()
def _homes(model: nn.Module, mods: list, huge_pages: bool, fuse: bool) -> list[tuple[list, torch.Tensor | None]]:
    """Where each group of layers' input-major weights goes: (layers, [in, their columns] buffer), or (layer, None) for
    a layer left to torch's allocator. fuse: siblings (`siblings`) share one buffer, each input's weights for all of
    them one row; huge_pages: all CPU buffers of one dtype lie in one huge-page arena, in module order
    (`huge_pages.huge_slices`), where the system has such pages."""
    from spon.serving.huge_pages import huge_slices

    groups = siblings(model, mods) if fuse and len(mods) > 1 else [[m] for m in mods]
    shapes = [(g[0].in_features, sum(m.out_features for m in g)) for g in groups]
    homes: list = [None] * len(groups)
    cpu = [i for i, g in enumerate(groups) if g[0].weight.device.type == "cpu"]
    for dtype in {groups[i][0].weight.dtype for i in cpu}:
        ids = [i for i in cpu if groups[i][0].weight.dtype == dtype]
        slices = huge_slices([shapes[i] for i in ids], dtype) if huge_pages else None
        for i, home in zip(ids, slices or [None] * len(ids)):
            homes[i] = home if home is not None or len(groups[i]) == 1 else torch.empty(shapes[i], dtype=dtype)
    return list(zip(groups, homes))


@torch.no_grad()
def _swap_head(model: nn.Module, path: str, huge_pages: bool) -> None:
    """The output head (an exact nn.Linear: `get_output_embeddings`) becomes a `DecodeHead` on the same parameters."""
    found = output_head(model)
    if found is None or type(found[1]) is not nn.Linear:
        return
    name, head = found
    if huge_pages:
        from spon.serving.huge_pages import move_to_huge_pages_

        move_to_huge_pages_(head.weight)  # before the head's path is timed
    set_submodule(model, name, DecodeHead(head, path))


# Inductor options for every model `compile_decode_` compiles, dense or sparse (the same settings on both sides of a
# comparison): the generated wrapper otherwise checks the size and stride of each graph input on every call, ~1,000
# checks per SmolLM2 step (0.6 us each, ~3% of a 22 ms sparse step), for inputs whose layout cannot change between
# steps of one model.
COMPILE_OPTIONS = {"size_asserts": False, "alignment_asserts": False}


def compile_decode_(model: nn.Module, *, fullgraph: bool = True, group_projections: bool = True,
                    attention: str | None = "auto") -> nn.Module:
    """Compile the model's forward with torch.compile and make `generate` use a static KV cache, in place.

    Works on any Hugging Face causal LM, sparse or not: a prepared sparse model's single-token steps are captured
    whole, the sparse GEMV as one custom operator (`torch.ops.spon.sparse_gemv`). The first calls compile (one graph
    for the prompt's length, one for single tokens); time them apart from decoding. A mixture of experts whose experts
    were sparsified (`experts.ExpertLinears`) is compiled without fullgraph: each block's experts run eagerly.

    attention: the attention implementation the compiled graphs use (Hugging Face's `attn_implementation`). "auto":
    "eager" on CPU (the reference attention in plain torch ops, which inductor fuses into the step) and the model's own
    elsewhere; a name ("eager", "sdpa", ...) forces one; None keeps the model's. On CPU a single token's SDPA kernel
    call costs more than the attention itself, so "eager" decodes faster there, dense and sparse alike
    (docs/RESULTS.md, `docs/results/bench-cpu/attention/`). The scores of a long prompt are materialised ([heads, L, L] per layer) in prefill.

    group_projections: sparse layers that read the same input (q/k/v; gate/up) take one operator call per group
    (`kernels.grouping`, a graph pass), for sparse models only (a dense graph has nothing to group). With the siblings'
    weights side by side (`prepare_decode_`'s default) the call reads one row per kept input for the whole group.
    Grouped and side by side is a few percent to ~10% faster than neither (docs/RESULTS.md,
    `docs/results/bench-cpu/fused-rows/`). A layer called alone on side-by-side weights reads a strided part of each
    row, slower than on its own matrix, so leave this on unless the layers were prepared with `fuse_siblings=False`.
    """
    import torch._inductor.config as inductor_config

    # an option this torch's inductor does not know yet (alignment_asserts came in 2.7) is left out
    options = {k: v for k, v in COMPILE_OPTIONS.items() if hasattr(inductor_config, k)}
    if any(isinstance(m, ExpertLinears) for m in model.modules()):
        fullgraph = False  # a sparsified mixture of experts runs its experts loop outside the graph (`experts`)
    if sparse_modules(model):
        from spon.serving.kernels import op  # noqa: F401  the operator must exist before tracing

        if group_projections:
            from spon.serving.kernels.grouping import SUPPORTED, GroupSparseGemvs

            if SUPPORTED:
                options["post_grad_custom_post_pass"] = GroupSparseGemvs()

    if getattr(model, "_spon_compiled", False):
        return model
    if attention == "auto":
        attention = "eager" if next(model.parameters()).device.type == "cpu" else None
    if attention is not None:
        set_attention(model, attention)
    # every compiled model and switch (dense, without_spon, masked_dense) adds graphs to the same forward code object
    # (the setting's name before torch 2.7: cache_size_limit)
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    # ints that change per step turn symbolic once; COMPILE_OPTIONS drop the per-call stride checks of every input
    model.forward = torch.compile(model.forward, fullgraph=fullgraph, options=options)
    model.generation_config.cache_implementation = "static"
    model._spon_compiled = True
    return model


def set_attention(model: nn.Module, implementation: str) -> None:
    """Switch a Hugging Face model's attention implementation in place (`set_attn_implementation` where the model has
    it, else the config field the attention layers read at each forward; a model without a config is left alone)."""
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(implementation)
    elif getattr(model, "config", None) is not None:
        model.config._attn_implementation = implementation


def attention_of(model: nn.Module) -> str | None:
    """The attention implementation a Hugging Face model runs (None: not a Hugging Face model)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


@contextlib.contextmanager
def warm_guards() -> Iterator[None]:
    """Inside this block compiled forwards evaluate only the guards that told their graphs apart while warming up
    (`torch.compiler.set_stance(skip_guard_eval_unsafe=True)`), not the hundreds that check every module and tensor.

    For serving after a warm-up that ran every state the block will see (each switch such as `without_spon` or
    `masked_dense` once): a state never seen before could reuse a graph silently. What it saves is a fixed cost per
    step, so it matters most on small models (docs/RESULTS.md).
    """
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        yield


@contextlib.contextmanager
def masked_dense(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this block single tokens take the plain path too (F.linear on the masked input, and on the output
    head): the reference."""
    heads = [m for m in model.modules() if isinstance(m, DecodeHead)]
    with set_attr([m.decode for m in sparse_modules(model).values() if m.decode is not None], "use_kernel", False), \
            set_attr(heads, "use_kernel", False):
        yield model


def decode_backends(model: nn.Module, device: torch.device | str | None = None) -> dict[str, str]:
    """What each sparse layer's single-token step uses: "cpu", "triton", "torch" (the plain-torch sparse GEMV),
    "masked-matmul" (a rule the kernels do not compute, or unfolded vectors) or "none" (not prepared)."""
    from spon.serving.kernels import backend_for

    out = {}
    for name, m in sparse_modules(model).items():
        if m.decode is None:
            out[name] = "none"
        elif not m.decode.use_kernel or not m.rule.plain or m.unfolded_vectors:
            out[name] = "masked-matmul"
        else:
            wt = input_major(m)
            out[name] = backend_for(torch.empty(0, device=device or wt.device), wt)
    return out


def _decode_head(model: nn.Module) -> DecodeHead | None:
    return next((m for m in model.modules() if isinstance(m, DecodeHead)), None)


def head_path(model: nn.Module) -> str | None:
    """How the prepared output head computes one token ("kernel" or "torch"), or None (no `DecodeHead`)."""
    head = _decode_head(model)
    return None if head is None else head.path


def layers_on_huge_pages(model: nn.Module) -> bool:
    """Whether `prepare_decode_` laid the sparse layers' weights out in a huge-page arena (`huge_pages.huge_slices`):
    all of them on one storage, the first starting on a 2 MB boundary."""
    from spon.serving.huge_pages import is_huge

    weights = [m.weight for m in sparse_modules(model).values() if m.decode is not None]
    if not weights or len({w.untyped_storage().data_ptr() for w in weights}) != 1:
        return False
    return is_huge(min(weights, key=lambda w: w.data_ptr()))


def head_on_huge_pages(model: nn.Module) -> bool:
    """Whether `prepare_decode_` moved the output head's weight onto huge pages (`huge_pages.move_to_huge_pages_`)."""
    from spon.serving.huge_pages import is_huge

    head = _decode_head(model)
    return head is not None and is_huge(head.weight)


def decode_backend(model: nn.Module) -> str:
    """One line for all layers: the backend when they agree ("cpu"), else the count of each ("cpu 150, masked-matmul 60")."""
    counts = collections.Counter(decode_backends(model).values())
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} {v}" for k, v in counts.most_common())

"""Fused mixture-of-experts weights as one linear layer per expert projection, so experts are sparsified like any
other linear.

transformers 5 keeps a block's experts as 3-D tensors (`gate_up_proj` [E, 2I, H] or `up_proj`, and `down_proj`
[E, H, I]; [E, in, out] where `is_transposed`), in classes marked by `@use_experts_implementation`, whose flags
describe the layout (`has_gate`, `has_bias`, `is_transposed`, `has_post_expert_norm`; before transformers 5.3 there is
no `has_gate` and every such module gates). `unfuse_experts_` swaps each
such module for `ExpertLinears`: per expert, one linear layer per projection whose weight and bias are views of the
same memory (nothing copied), and the eager loop over the experts the tokens picked, through the original module's
own gating (`_apply_gate`: the gate/up layout, clamps and all), activation and post-expert norm. transformers 4 keeps
most experts as `nn.Linear` modules already. `fuse_experts_` puts the original modules back.

Llama 4 keeps its experts the older way, in a module without flags (`Llama4TextExperts`: `gate_up_proj` [E, H, 2I],
`down_proj` [E, I, H], a forward over [E * T, H] rows, every expert given every token, scaled by its routing score,
zero where the token went elsewhere; the same on transformers 4). Such "batched" experts are recognised by a probe, not by class: a module with
exactly these two 3-D parameters and an `act_fn` whose forward on random rows equals the per-expert computation
(gate first, `up * act_fn(gate)`). `ExpertLinears` then runs only the rows that are not all zero, each expert on the
tokens routed to it (a zero row's output is zero, as in the original, where experts carry no bias).

DBRX keeps each projection's experts stacked by rows in one 2-D tensor (`DbrxExperts.mlp`: `w1` gate and `v1` up
[E * F, H], `w2` down [E * F, H] used as [in, out]) behind the routed forward(hidden, top_k_index, top_k_weights);
found by a probe as well, it becomes `gate_proj`, `up_proj`, `down_proj` per expert (transformers 5; 4's DBRX routes
through another signature, fails the probe and stays dense, named in the notice).

JetMoE keeps one projection's experts as one 3-D `weight` [E, out, in] applied to rows that come split by count
(`JetMoeParallelExperts`: forward(rows, counts), rows grouped by expert); found by a probe too, such a module becomes
one `nn.Linear` per expert (`input_linear.expert.3`) applied to its share of the rows (transformers 4 and 5).

One loop iteration per expert hit is data-dependent, so a compiled forward runs the experts outside the graph (a
graph break per block, `compile_decode_` compiles without fullgraph; their sparse layers take the kernel eagerly).
"""

from __future__ import annotations

import torch
from torch import nn

from spon.sparsity.swap import set_submodule

__all__ = ["ExpertLinears", "unfuse_experts_", "fuse_experts_", "is_fused_experts", "is_batched_experts", "is_split_experts",
           "is_glu_experts", "expert_shares"]

PER_TOKEN = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k")  # config names of k


def _projections(experts: nn.Module) -> tuple[str, ...]:
    """The per-expert layer lists' names (for a fused module: its 3-D parameters' names; a split module's `weight`
    becomes the list `expert`)."""
    kind = getattr(experts, "kind", None)
    if kind == "split":
        return ("expert",)
    if kind == "glu":
        return ("gate_proj", "up_proj", "down_proj")
    return ("gate_up_proj" if getattr(experts, "has_gate", True) else "up_proj", "down_proj")


def _plain_3d(p) -> bool:
    return isinstance(p, nn.Parameter) and p.dim() == 3 and p.is_floating_point() and not p.is_meta


def _has_flags(mod: nn.Module) -> bool:
    """Marked by `@use_experts_implementation`: its flags `has_bias` and `is_transposed` (`has_gate` too from
    transformers 5.3; before, every such module gated: `gate_up_proj`, `_apply_gate`)."""
    return all(hasattr(mod, f) for f in ("has_bias", "is_transposed", "_apply_gate"))


def is_fused_experts(mod: nn.Module) -> bool:
    """A transformers 5 experts module (`@use_experts_implementation`) whose weights are plain 3-D tensors and whose
    forward is the decorated dispatch itself; or one of the flagless layouts a probe recognises (`is_batched_experts`,
    `is_split_experts`, `is_glu_experts`)."""
    if isinstance(mod, ExpertLinears):
        return False
    if not _has_flags(mod):
        return is_batched_experts(mod) or is_split_experts(mod) or is_glu_experts(mod)
    if getattr(type(mod).forward, "__wrapped__", None) is None:  # a subclass's own forward around the dispatch (Ergo's
        return False  # per-route norm): swapping the module would skip it; left dense
    return all(_plain_3d(getattr(mod, name, None)) for name in _projections(mod))


def is_batched_experts(mod: nn.Module) -> bool:
    """Llama 4's layout (module docstring): parameters exactly `gate_up_proj` [E, H, 2I] and `down_proj` [E, I, H], an
    `act_fn`, and a forward over [E * T, H] rows that a probe (two random rows per expert, one of them zero) shows to
    be the per-expert computation. The probe's verdict is kept on the module."""
    gate_up, down = mod._parameters.get("gate_up_proj"), mod._parameters.get("down_proj")
    if not (set(dict(mod.named_parameters())) == {"gate_up_proj", "down_proj"} and _plain_3d(gate_up)
            and _plain_3d(down) and callable(getattr(mod, "act_fn", None)) and gate_up.shape[0] == down.shape[0]
            and gate_up.shape[2] == 2 * down.shape[1] and gate_up.shape[1] == down.shape[2]):
        return False
    return _verdict(mod, "_spon_batched", _probe)


def is_glu_experts(mod: nn.Module) -> bool:
    """DBRX's layout (module docstring): a child `mlp` holding exactly `w1`, `v1`, `w2`, each [E * F, H] with E the
    module's `num_experts`, and a routed forward that a probe shows to be, per token, the sum over its experts of
    weight * (act(x w1_e^T) * (x v1_e^T)) w2_e. The verdict is kept on the module."""
    mlp, n = getattr(mod, "mlp", None), getattr(mod, "num_experts", None)
    params = dict(mlp.named_parameters()) if isinstance(mlp, nn.Module) else {}
    if not (set(params) == {"w1", "v1", "w2"} and isinstance(n, int) and n > 0 and set(dict(mod.named_parameters()))
            == {f"mlp.{k}" for k in params} and all(isinstance(p, nn.Parameter) and p.dim() == 2 and p.is_floating_point()
                                                    and not p.is_meta and p.shape == params["w1"].shape for p in params.values())
            and params["w1"].shape[0] % n == 0 and callable(getattr(mlp, "activation_fn", None))):
        return False
    return _verdict(mod, "_spon_glu", _probe_glu)


@torch.no_grad()
def _probe_glu(mod: nn.Module) -> bool:
    n, mlp = mod.num_experts, mod.mlp
    w1, v1, w2 = (p.reshape(n, -1, p.shape[-1]) for p in (mlp.w1, mlp.v1, mlp.w2))
    width = w1.shape[-1]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, width, generator=gen).to(w1)
    index = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n], 1)  # each token two experts, every expert hit
    weights = torch.rand(n, 2, generator=gen).to(w1)
    ref = torch.zeros(n, width, dtype=w1.dtype)
    for t in range(n):
        for e, w in zip(index[t].tolist(), weights[t]):
            ref[t] += w * ((mlp.activation_fn(x[0, t] @ w1[e].T) * (x[0, t] @ v1[e].T)) @ w2[e])
    return _computes(lambda: mod(x, index, weights), ref.reshape(x.shape))  # the input's shape, as `ExpertLinears` gives


def is_split_experts(mod: nn.Module) -> bool:
    """JetMoE's layout (module docstring): one parameter, `weight` [E, out, in], and a forward(rows, counts) that a
    probe shows to be each expert's `F.linear` on its consecutive share of the rows. The verdict is kept on the module."""
    if not (set(dict(mod.named_parameters())) == {"weight"} and _plain_3d(mod._parameters["weight"])):
        return False
    return _verdict(mod, "_spon_split", _probe_split)


@torch.no_grad()
def _probe_split(mod: nn.Module) -> bool:
    n, _, width = mod.weight.shape
    counts = [(e % 3) for e in range(n)]  # 0, 1 or 2 rows an expert
    x = torch.randn(sum(counts), width, generator=torch.Generator().manual_seed(0)).to(mod.weight)
    ref = torch.cat([torch.nn.functional.linear(part, mod.weight[e]) for e, part in enumerate(x.split(counts))])
    return _computes(lambda: mod(x, counts), ref)


@torch.no_grad()
def _probe(mod: nn.Module) -> bool:
    gate_up, down = mod.gate_up_proj, mod.down_proj
    n, h = gate_up.shape[0], gate_up.shape[1]
    x = torch.randn(n, 2, h, generator=torch.Generator().manual_seed(0)).to(gate_up)
    x[:, 1] = 0  # a token routed elsewhere
    gate, up = torch.bmm(x, gate_up).chunk(2, dim=-1)
    ref = torch.bmm(up * mod.act_fn(gate), down).reshape(-1, h)
    return _computes(lambda: mod(x.reshape(-1, h)), ref)


def _verdict(mod: nn.Module, key: str, probe) -> bool:
    """probe(mod), run once and kept on the module under `key`."""
    if key not in mod.__dict__:
        mod.__dict__[key] = probe(mod)
    return mod.__dict__[key]


def _computes(run, ref: torch.Tensor) -> bool:
    """Whether run() (the module's own forward on the probe's input) gives ref, its shape and its values to rounding;
    a forward that raises takes another calling convention: not the layout probed."""
    try:
        out = run()
    except Exception:  # noqa: BLE001
        return False
    return tuple(out.shape) == tuple(ref.shape) and torch.allclose(out, ref, rtol=1e-3,
                                                                   atol=1e-5 * float(ref.abs().max()) + 1e-6)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> nn.Module:
    """A linear layer on views of one expert's weight (and bias): `nn.Linear` for [out, in], transformers' `Conv1D`
    for [in, out] (the layout `SparseLinear` keeps input-major as stored)."""
    if transposed:
        from transformers.pytorch_utils import Conv1D

        lin = Conv1D.__new__(Conv1D)
        nn.Module.__init__(lin)
        lin.nx, lin.nf = weight.shape
        if bias is None:  # Conv1D always adds one
            bias = torch.zeros(lin.nf, dtype=weight.dtype, device=weight.device)
    else:
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=False)
    lin.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
    return lin


def _restack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The experts' tensors as one [E, ...] tensor: the memory they are views of where they still lie evenly in it
    (nothing copied), else a stacked copy (after a `model.to(...)` moved them one by one)."""
    first = tensors[0]
    step = tensors[1].storage_offset() - first.storage_offset() if len(tensors) > 1 else first.numel()
    storage = first.untyped_storage()
    even = step > 0 and all(
        t.untyped_storage().data_ptr() == storage.data_ptr() and t.dtype == first.dtype and t.stride() == first.stride()
        and t.storage_offset() == first.storage_offset() + i * step for i, t in enumerate(tensors))
    if not even:
        return torch.stack([t.detach() for t in tensors])
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(
        storage, first.storage_offset(), (len(tensors), *first.shape), (step, *first.stride()))


class ExpertLinears(nn.Module):
    """A fused experts module as per-expert linear layers (`gate_up_proj.3`, `down_proj.3`, ...), same forward."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        # "flags": transformers 5's layout flags; "batched": Llama 4's; "split": JetMoE's; "glu": DBRX's (module docstring)
        self.kind = ("flags" if _has_flags(fused) else "split" if is_split_experts(fused)
                     else "glu" if is_glu_experts(fused) else "batched")
        if self.kind == "flags":
            self.has_gate = getattr(fused, "has_gate", True)  # before transformers 5.3: no flag, always gated
            self.has_bias, self.is_transposed = fused.has_bias, fused.is_transposed
        else:
            self.has_gate, self.has_bias, self.is_transposed = self.batched, False, self.batched
        self.has_post_expert_norm = bool(getattr(fused, "has_post_expert_norm", False))
        layout = self._layout(fused)
        first = getattr(layout[0][1], layout[0][2])
        self.num_experts = fused.num_experts if self.kind == "glu" else first.shape[0]
        self.__dict__["_shapes"] = [tuple(getattr(owner, source).shape) for _, owner, source, _ in layout]
        for name, owner, source, transposed in layout:
            weight = getattr(owner, source).detach()
            weight = weight.reshape(self.num_experts, -1, weight.shape[-1]) if weight.dim() == 2 else weight
            bias = getattr(owner, f"{source}_bias").detach() if self.has_bias else None
            self.add_module(name, nn.ModuleList(
                _linear(weight[e], None if bias is None else bias[e], transposed) for e in range(self.num_experts)))
        if self.has_post_expert_norm:
            self.post_expert_norm = fused.post_expert_norm
        self.__dict__["_trainable"] = first.requires_grad
        self.__dict__["_fused"] = fused  # not a child: its gating and activation are used, its weights are these views
        for _, owner, source, _ in layout:  # the fused parameters leave it (kept alive by the views); `to_fused` rebuilds
            for key in (source, f"{source}_bias"):
                owner._parameters.pop(key, None)

    @property
    def batched(self) -> bool:
        """Llama 4's layout (`is_batched_experts`)."""
        return self.kind == "batched"

    def _layout(self, fused: nn.Module) -> list[tuple[str, nn.Module, str, bool]]:
        """Per projection: the name of its per-expert list here, the module holding the fused parameter, the
        parameter's name, and whether an expert's part is stored [in, out] (transposed)."""
        if self.kind == "split":
            return [("expert", fused, "weight", False)]
        if self.kind == "glu":
            return [("gate_proj", fused.mlp, "w1", False), ("up_proj", fused.mlp, "v1", False),
                    ("down_proj", fused.mlp, "w2", True)]
        return [(name, fused, name, self.is_transposed) for name in _projections(fused)]

    def to_fused(self) -> nn.Module:
        """The original experts module, its fused parameters rebuilt from these layers' current weights."""
        fused = self._fused
        for (name, owner, source, _), shape in zip(self._layout(fused), self._shapes):
            layers = getattr(self, name)
            setattr(owner, source, nn.Parameter(_restack([lin.weight for lin in layers]).reshape(shape),
                                                requires_grad=self._trainable))
            if self.has_bias:
                setattr(owner, f"{source}_bias",
                        nn.Parameter(_restack([lin.bias for lin in layers]), requires_grad=self._trainable))
        if self.has_post_expert_norm:
            fused.post_expert_norm = self.post_expert_norm
        return fused

    @torch.compiler.disable  # data-dependent: run eagerly, its sparse layers through their own kernels
    def forward(self, hidden_states: torch.Tensor, *route, **named) -> torch.Tensor:
        """hidden_states [..., H]; the routing, by position or name: the experts picked per token [..., k] and their
        weights [..., k]."""
        if self.batched:
            return self._batched(hidden_states)
        if self.kind == "split":  # rows grouped by expert, route[0]: each expert's count
            parts = hidden_states.split(list(route[0] if route else next(iter(named.values()))), dim=0)
            return torch.cat([self.expert[e](part) if part.shape[0] else part.new_zeros(0, self.expert[e].out_features)
                              for e, part in enumerate(parts)])
        top_k_index, top_k_weights = [*route, *named.values()][:2]
        x = hidden_states.reshape(-1, hidden_states.shape[-1])
        index = top_k_index.reshape(x.shape[0], -1)
        weights = top_k_weights.reshape(x.shape[0], -1)
        if x.shape[0] == 1:  # one token (decoding): its k experts in turn, no gather or scatter
            out = None
            for e, w in zip(index[0].tolist(), weights[0]):
                if 0 <= e < self.num_experts:
                    h = self._expert(e, x) * w
                    out = h if out is None else out + h
            return (torch.zeros_like(x) if out is None else out.to(x.dtype)).reshape(hidden_states.shape)
        out = torch.zeros_like(x)
        for e in _experts_hit(index, self.num_experts):
            token, slot = torch.where(index == e)
            h = self._expert(e, x[token])
            out.index_add_(0, token, (h * weights[token, slot, None]).to(out.dtype))
        return out.reshape(hidden_states.shape)

    def _batched(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Llama 4's convention: [E * T, H] rows, expert-major, a token's row zero where it went to another expert."""
        x = hidden_states.reshape(self.num_experts, -1, hidden_states.shape[-1])
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            token = x[e].any(-1).nonzero().squeeze(1)
            if token.numel() == x.shape[1]:
                out[e] = self._expert(e, x[e]).to(out.dtype)
            elif token.numel():
                out[e, token] = self._expert(e, x[e, token]).to(out.dtype)
        return out.reshape(hidden_states.shape)

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on its tokens: up (and gate), the model's own gating or activation, down, post-expert norm."""
        down = self.down_proj[e]
        if self.kind == "glu":
            return down(self._fused.mlp.activation_fn(self.gate_proj[e](x)) * self.up_proj[e](x))
        h = getattr(self, _projections(self)[0])[e](x)
        if self.batched:
            gate, up = h.chunk(2, dim=-1)
            return down(up * self._fused.act_fn(gate))
        h = down(self._fused._apply_gate(h) if self.has_gate else self._fused.act_fn(h))
        return self.post_expert_norm(h) if self.has_post_expert_norm else h

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, unfused from {type(self._fused).__name__}"


def _experts_hit(index: torch.Tensor, num_experts: int) -> list[int]:
    """The experts some token picked (ids past the last, expert-parallel sentinels, left out)."""
    return [e for e in torch.unique(index).tolist() if 0 <= e < num_experts]


def unfuse_experts_(model: nn.Module) -> dict[str, ExpertLinears]:
    """Swap every fused experts module of `model` for `ExpertLinears`, in place; returns the new modules by name."""
    found = [name for name, mod in model.named_modules() if is_fused_experts(mod)]
    for name in found:
        set_submodule(model, name, ExpertLinears(model.get_submodule(name)))
    return {name: model.get_submodule(name) for name in found}


def fuse_experts_(model: nn.Module, names: list[str] | None = None) -> nn.Module:
    """Put the original fused experts modules back (the inverse of `unfuse_experts_`); names: only these."""
    for name in [n for n, m in model.named_modules() if isinstance(m, ExpertLinears) and (names is None or n in names)]:
        set_submodule(model, name, model.get_submodule(name).to_fused())
    return model


def expert_shares(model: nn.Module) -> dict[str, float]:
    """k/E, the share of tokens an expert sees on average, for every layer inside an `ExpertLinears`, by qualified name
    (k from the model config's experts-per-token, E the module's expert count; layers not inside one are absent)."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    k = next((v for key in PER_TOKEN if isinstance(v := getattr(config, key, None), int) and v > 0), None)
    shares = {}
    for name, mod in model.named_modules():
        if isinstance(mod, ExpertLinears):
            share = min(1.0, (k or mod.num_experts) / mod.num_experts)
            shares.update({f"{name}.{proj}.{e}": share for proj in _projections(mod) for e in range(mod.num_experts)})
    return shares


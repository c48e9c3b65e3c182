"""Serve a sparsified model from block-quantized weights: every sparse layer, the output head and a tied embedding keep
only their quantized bytes (`quantized.QuantWeight`), and single tokens go through the quantized sparse GEMV.

Where the weights come from:
- a GGUF file (the one the model was loaded from): each tensor keeps the file's own type and codes. The file's
  tensors are matched to the model's modules by their dequantized rows (the values transformers loaded from the same
  file), which also finds the row order transformers changed on load (Llama's q/k projections), so nothing depends on
  a name table and a tensor that does not match exactly is never used.
- `quantize_weights_(model, "q8_0")`: a float model's weights replaced in place by their quantized values (still
  float), so calibration, SPON training and the dense teacher all see the weights that will be served; serving then
  quantizes them again, which gives back the same codes (checked).

`QuantLinear` replaces a `SparseLinear` (folded, plain threshold rule) or a dense head: a single token is one kernel
call; several tokens (prefill) multiply by the dequantized weight, made for that call only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spon.errors import SponError
from spon.serving.quantized import KINDS, QUANTIZABLE, TYPES, QuantWeight, from_gguf, gguf_type_name, quantize
from spon.sparsity.selection import sparsified_positions
from spon.sparsity.sparse_linear import SparseLinear, is_linear, linear_matrix
from spon.sparsity.sparsify import output_head, sparse_activations, sparse_modules
from spon.sparsity.swap import set_submodule

__all__ = ["QuantLinear", "QuantEmbedding", "quantize_weights_", "serve_quantized_", "gguf_weights", "quantized_bytes",
           "WEIGHT_CHOICES"]

WEIGHT_CHOICES = ("float", "gguf", *(t.lower() for t in QUANTIZABLE))


class QuantLinear(nn.Module):
    """y = W S(x) + b from a `QuantWeight`; `threshold` -1 keeps every input (a dense layer such as the head).

    sparse_bias: the bias at sparsified tokens (SPON folded in); bias: at the tokens the token mode leaves dense."""

    def __init__(self, weight: QuantWeight, threshold: float = -1.0, *, bias=None, sparse_bias=None, tokens: str = "all",
                 last_fraction: float = 0.5):
        super().__init__()
        self.qweight, self.threshold = weight, float(threshold)
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.register_buffer("bias", None if bias is None else bias.detach().float(), persistent=False)
        sb = sparse_bias if sparse_bias is not None else bias
        self.register_buffer("sparse_bias", None if sb is None else sb.detach().float(), persistent=False)
        self.tokens, self.last_fraction = tokens, last_fraction
        from spon.serving.kernels import quant_op  # noqa: F401  the operator, before any call or trace

        for field in ("q", "hb", "scale", "minimum"):  # buffers, so a compiled graph takes them as its inputs
            self.register_buffer(field, getattr(weight, field), persistent=False)
        self.block, self.kind, self.offset = weight.block, KINDS[weight.kind], weight.offset

    def _linear(self, x: torch.Tensor, w: torch.Tensor, bias, sparse: bool) -> torch.Tensor:
        if sparse and self.threshold >= 0:
            x = x * (x.abs() > self.threshold).to(x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == self.in_features:  # one token: the kernel
            return torch.ops.spon.quant_gemv(x, self.q, self.hb, self.scale, self.minimum, self.sparse_bias,
                                             self.threshold, self.block, self.kind, self.offset)
        w = self.qweight.dequantize().to(x.dtype)  # prefill: made for this call only
        T = x.shape[-2] if x.dim() >= 2 else 1
        pos = sparsified_positions(T, self.tokens, self.last_fraction)
        if pos.start == 0 and pos.stop == T:
            return self._linear(x, w, self.sparse_bias, True)
        if pos.start >= pos.stop:
            return self._linear(x, w, self.bias, False)
        return torch.cat([self._linear(x[..., : pos.start, :], w, self.bias, False),
                          self._linear(x[..., pos.start : pos.stop, :], w, self.sparse_bias, True)], dim=-2)

    def extra_repr(self) -> str:
        return f"{self.qweight.type} {self.out_features}x{self.in_features}, threshold={self.threshold:.4g}"


class QuantEmbedding(nn.Module):
    """An embedding that shares the quantized head's weight (tied): token t's vector is the head's row t, dequantized.
    `scale`: a scaled embedding's factor (Gemma multiplies by sqrt(hidden))."""

    def __init__(self, weight: QuantWeight, scale=None):
        super().__init__()
        self.qweight = weight
        self.register_buffer("scale", None if scale is None else torch.as_tensor(scale).detach().float(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight.rows(ids.reshape(-1)).view(*ids.shape, self.qweight.in_features)
        return rows * self.scale if self.scale is not None else rows


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the distinct quantized weights a served model holds."""
    seen = {id(m.qweight): m.qweight.nbytes for m in model.modules() if isinstance(m, (QuantLinear, QuantEmbedding))}
    return sum(seen.values())


def _targets(model: nn.Module) -> dict[str, nn.Module]:
    """The layers to quantize: every sparse layer and the output head (sparse or dense)."""
    mods: dict[str, nn.Module] = dict(sparse_modules(model))
    head = output_head(model)
    if head is not None and (is_linear(head[1]) or isinstance(head[1], SparseLinear)):
        mods.setdefault(head[0], head[1])
    return mods


@torch.no_grad()
def quantize_weights_(model: nn.Module, qtype: str) -> dict:
    """Replace the weights of every decoder linear and the head by their `qtype` values (dequantized, same dtype), in
    place: the dense model then is the quantized model a user would otherwise run. Returns {"type", "layers"}."""
    name = qtype.upper()
    if name not in QUANTIZABLE:
        raise SponError(f"--weights {qtype}: spon quantizes float weights to {', '.join(q.lower() for q in QUANTIZABLE)}")
    mods = {n: m for n, m in model.named_modules() if (is_linear(m) or isinstance(m, SparseLinear))
            and re.search(r"\.\d+\.", n)}
    head = output_head(model)
    if head is not None:
        mods[head[0]] = head[1]
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embed, nn.Embedding) and (head is None or embed.weight is not linear_matrix(head[1])):
        mods["<embedding>"] = embed  # an embedding of its own is served quantized too: its values must be the type's
    done = 0
    for mod in mods.values():
        w = mod.weight if isinstance(mod, nn.Embedding) else linear_matrix(mod)
        if w.shape[1] % 32:
            continue  # not whole blocks: stays float (llama.cpp keeps such tensors in a float type too)
        w.copy_(quantize(w, name).dequantize().to(w.dtype))
        done += 1
    return {"type": name, "layers": done}


def _row_hashes(w: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(r.tobytes(), digest_size=12).digest() for r in w]


def _layer_of(name: str) -> str | None:
    m = re.search(r"(?:^|\.)(\d+)\.", name)
    return m.group(1) if m else None


def gguf_weights(model: nn.Module, path: str | Path, names: list[str] | None = None,
                 matrices: dict[str, torch.Tensor] | None = None) -> dict[str, QuantWeight]:
    """The GGUF file's own quantized tensors for the model's target layers (or for `matrices`, name -> [rows, cols]),
    matched by their dequantized rows (see the module's docstring). Layers whose tensor is a float type, or has no
    kernel, or matches nothing, are left out."""
    import gguf
    import gguf.quants

    reader = gguf.GGUFReader(str(path))
    tensors = [t for t in reader.tensors if len(t.shape) == 2 and gguf_type_name(t.tensor_type) in TYPES]
    by_shape: dict[tuple[int, int], list] = {}
    for t in tensors:
        by_shape.setdefault((int(t.shape[1]), int(t.shape[0])), []).append(t)
    if matrices is None:
        mods = _targets(model)
        matrices = {name: linear_matrix(mods[name]) for name in names or list(mods)}
    found: dict[str, QuantWeight] = {}
    for name, matrix in matrices.items():
        w = matrix.detach().float().cpu().numpy()
        layer = _layer_of(name)
        cands = sorted(by_shape.get(w.shape, []), key=lambda t: _layer_of(t.name) != layer)
        want = _row_hashes(w)
        for t in cands:
            ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
            where = {h: i for i, h in enumerate(_row_hashes(ref))}
            perm = [where.get(h) for h in want]
            if None in perm:
                continue
            qw = from_gguf(t.tensor_type, np.asarray(t.data)[perm], w.shape)  # rows in the model's order
            if torch.equal(qw.dequantize(), torch.from_numpy(w)):
                found[name] = qw
                by_shape[w.shape].remove(t)
                break
    return found


@torch.no_grad()
def serve_quantized_(model: nn.Module, weights: str, gguf: str | Path | None = None) -> dict:
    """Swap every sparse layer and the head for a `QuantLinear` (and a tied embedding for a `QuantEmbedding`), in place,
    so the model holds only quantized bytes for them. weights: "gguf" (the file's own types; `gguf` is the file) or a
    type to quantize to (the weights must already be its values: `quantize_weights_`). Returns what was done."""
    acts = list(sparse_activations(model))
    if acts:
        raise SponError(f"{acts[0]}: quantized serving takes threshold rules on linear inputs; CATS's activation thresholds "
                        "are not supported (use --rule magnitude)")
    mods = _targets(model)
    bad = [n for n, m in mods.items() if isinstance(m, SparseLinear) and (not m.rule.plain or m.unfolded_vectors)]
    if bad:
        raise SponError(f"{bad[0]}: quantized serving needs the plain threshold rule with SPON folded (magnitude; fold "
                        "first); this layer has another rule or unfolded vectors")
    if weights == "gguf":
        if gguf is None:
            raise SponError("--weights gguf keeps a GGUF file's own types: load the model from a .gguf file or an "
                            "embedded name, or pick a type to quantize to (e.g. --weights q8_0)")
        qws = gguf_weights(model, gguf, list(mods))
    else:
        qws = {}
        for name, mod in mods.items():
            w = linear_matrix(mod)
            if w.shape[1] % 32 == 0:
                qw = quantize(w, weights)
                if not torch.equal(qw.dequantize(), w.detach().float().cpu()):
                    raise SponError(f"{name}: its weights are not {weights} values; quantize the model's weights first "
                                    f"(--weights {weights} at calibration, or spon.quantize_weights_)")
                qws[name] = qw
    head = output_head(model)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embed is not None and linear_matrix(head[1]) is getattr(embed, "weight", None)
    if embed is not None and not tied and isinstance(embed, nn.Embedding) and embed.weight.shape[1] % 32 == 0:
        # an embedding of its own (Qwen2.5's file: Q5_0 beside a Q8_0 head): quantized too, looked up by rows
        if weights == "gguf":
            qe = gguf_weights(model, gguf, matrices={"<embedding>": embed.weight}).get("<embedding>")
        else:
            qe = quantize(embed.weight, weights)
            qe = qe if torch.equal(qe.dequantize(), embed.weight.detach().float().cpu()) else None
        if qe is not None:
            emb_name = next(n for n, m in model.named_modules() if m is embed)
            set_submodule(model, emb_name, QuantEmbedding(qe, getattr(embed, "embed_scale", None)))
    for name, qw in qws.items():
        mod = mods[name]
        tied_head = tied and name == head[0]
        if isinstance(mod, SparseLinear):
            new = QuantLinear(qw, float(mod.threshold), bias=mod.bias,
                              sparse_bias=mod.folded_bias if mod.folded else mod.bias, tokens=mod.tokens,
                              last_fraction=mod.last_fraction)
        else:
            new = QuantLinear(qw, -1.0, bias=getattr(mod, "bias", None))
        set_submodule(model, name, new)
        if tied_head:
            emb_name = next(n for n, m in model.named_modules() if m is embed)
            set_submodule(model, emb_name, QuantEmbedding(qw, getattr(embed, "embed_scale", None)))
    return {"weights": weights, "layers": len(qws), "of": len(mods), "quantized_bytes": quantized_bytes(model),
            "types": sorted({qw.type for qw in qws.values()})}

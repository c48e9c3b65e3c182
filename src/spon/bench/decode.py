"""`spon bench decode`: batch-1 greedy generation, dense vs sparse vs sparse + folded SPON, tokens/s.

One run, variants alternated round by round (same machine load for all), prompt prefill excluded from
the rate, first round discarded as warm-up. Variants:
- dense: the stock model, untouched (the baseline users have);
- dense_kernel_0pct: our decode path with nothing dropped (threshold -1, no SPON): the gain from the loop alone;
- sparse: the sparse kernel, plain biases;
- sparse+SPON: the sparse kernel with SPON folded into the biases (what `spon export` serves);
- masked_dense: sparse+SPON through F.linear on the masked input (the reference the kernel must match);
- with compile: dense_compiled (HF's own model through torch.compile with a static KV cache: the best dense
  baseline in PyTorch), kernel_0pct_compiled, sparse_compiled and sparse+SPON_compiled (our path compiled the
  same way, the sparse GEMV one custom operator in the graph);
- every row but llama.cpp's runs the same loop, `greedy.greedy_generate` (one forward per token; Hugging Face's
  `generate` costs ~4% of a compiled SmolLM2 bf16 step around the forward, so it would handicap whichever row used it);
- llama_cpp: llama.cpp dense on the same weights at the same precision (`bench.llama_cpp`), where installed.
Rates are medians over rounds; `per_round` pairs each row with a baseline round by round (median, min, max of the
ratios), which is what to quote for a speed-up.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from spon.io.atomic import ensure_writable_dir
from spon.config import SparsityConfig, opt
from spon.errors import SponError
from spon.serving.decode import (attention_of, decode_backend, head_on_huge_pages, head_path, layers_on_huge_pages, masked_dense,
                      prepare_decode_, warm_guards)
from spon.io.models import ModelArgs
from spon.serving.machine import machine
from spon.serving.greedy import greedy_generate
from spon.serving.huge_pages import huge_page_bytes
from spon.sparsity.sparsify import measure_sparsity, sparse_modules, sparsify_, without_spon
from spon.bench.output import write_json

__all__ = ["greedy_decode", "bench_decode", "bench_decode_quantized", "gguf_tensor_bytes", "byte_bound", "round_ratios", "VARIANTS", "DecodeBench", "run_decode_bench"]

VARIANTS = ("dense", "dense_kernel_0pct", "sparse", "sparse+SPON", "masked_dense")


def byte_bound(model: nn.Module, skipped: float, usage: dict[str, float] | None = None) -> float:
    """Weight bytes a single-token step reads dense over sparse: the speed-up of a step that did nothing but read
    weights at one bandwidth, when `skipped` of the sparse layers' weight columns (weighted, `measure_sparsity`) are
    skipped. The dense output head and any dense linear count in full; attention, norms and the framework add time to
    both sides, so a measured ratio against an equally efficient dense step stays below this. usage: the share of tokens
    each sparse layer reads its weights for (`measure_sparsity`'s; a mixture of experts' expert reads k/E on
    average), 1 for a layer it leaves out or without it."""
    usage = usage or {}
    mods = {id(m): (n, m) for n, m in sparse_modules(model).items()}
    sparse = sum(usage.get(n, 1.0) * m.in_features * m.out_features for n, m in mods.values())
    head = model.get_output_embeddings()
    dense = sum(m.in_features * m.out_features for m in model.modules()  # the head (a DecodeHead once prepared) and the rest
                if (isinstance(m, nn.Linear) or m is head) and id(m) not in mods)
    return (dense + sparse) / (dense + sparse * (1.0 - skipped))


def round_ratios(seconds: dict[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    """Each row's speed over `reference`'s, round by round (the rows of one round ran back to back, so the pairing
    cancels load that drifts between rounds): median, min and max of reference_seconds / row_seconds."""
    out = {}
    for name, secs in seconds.items():
        r = sorted(ref / s for ref, s in zip(seconds[reference], secs))
        out[name] = {"median": statistics.median(r), "min": r[0], "max": r[-1]}
    return out


@torch.no_grad()
def greedy_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[list[int], float, float]:
    """Exactly `new_tokens` greedy tokens after `prompt` [1, T] (no early stop at end-of-text) through
    `greedy.greedy_generate`, the one loop every row but llama.cpp's runs (eager or compiled, dense or ours: one forward
    per token, a static KV cache for compiled models); returns (tokens, prefill seconds, decode seconds).

    The decode time runs from the first new token to the last: the new_tokens - 1 single-token steps.
    """
    times: list[float] = []
    t0 = time.perf_counter()
    tokens = greedy_generate(model, prompt, new_tokens, eos_token_id=None, on_token=lambda _: times.append(time.perf_counter()))
    return tokens, times[0] - t0, times[-1] - times[0]


@contextlib.contextmanager
def _nothing_dropped(model: nn.Module):
    mods = list(sparse_modules(model).values())
    saved = [m.threshold.clone() for m in mods]
    with without_spon(model):
        for m in mods:
            m.threshold.fill_(-1.0)
        try:
            yield model
        finally:
            for m, t in zip(mods, saved):
                m.threshold.copy_(t)


def _rounds(contexts: dict, prompt: torch.Tensor, new_tokens: int, repeats: int, warm: bool, progress: bool):
    """Every row once per round, in turn, a warm-up round first. contexts: name -> (model, context factory, decode
    function(model, prompt, new_tokens) -> (tokens, prefill s, decode s)). Rows named "..._compiled" compile in the
    warm-up round (timed apart) and run inside `decode.warm_guards` after it when `warm`. Returns (decode seconds of
    each timed round, the warm-up round's tokens, compile seconds, whether every round gave the warm-up's tokens)."""
    seconds: dict[str, list[float]] = {k: [] for k in contexts}
    tokens: dict[str, list[int]] = {}
    compile_seconds: dict[str, float] = {}
    steady: dict[str, bool] = {}
    for r in tqdm(range(repeats + 1), desc="decode rounds", disable=not progress):
        for name, (model, ctx, fn) in contexts.items():
            guards = warm_guards() if warm and r > 0 and name.endswith("_compiled") else contextlib.nullcontext()
            t0 = time.perf_counter()
            with ctx(), guards:
                toks, _, dt = fn(model, prompt, new_tokens)
            if r == 0 and name.endswith("_compiled"):
                compile_seconds[name] = round(time.perf_counter() - t0, 1)  # tracing and compiling, in the warm-up round
            tokens.setdefault(name, toks)
            steady[name] = steady.get(name, True) and toks == tokens[name]
            if r > 0:
                seconds[name].append(dt)
    return seconds, tokens, compile_seconds, steady


def bench_decode(dense_model: nn.Module, sparse_model: nn.Module, prompt: torch.Tensor, *, new_tokens: int = 64,
                 repeats: int = 3, progress: bool = True, compiled: tuple[nn.Module, nn.Module] | None = None,
                 llama=None, warm: bool = True) -> dict:
    """tokens/s of each variant; `sparse_model` is sparsified (thresholds, SPON vectors) and gets prepared here.

    compiled: (dense, sparse) copies to run through torch.compile with a static KV cache as well ("..._compiled"
    variants: HF dense compiled, our path at 0%, sparse and sparse+SPON compiled); the first round, which compiles,
    is timed apart ("compile_seconds") and discarded with the other warm-up runs.
    llama: a `llama_cpp.LlamaCpp` on the same weights at the same precision: its dense row ("llama_cpp"), timed in
    the same rounds.
    warm: time the compiled rows (dense and ours alike) inside `decode.warm_guards` once the warm-up round compiled
    every variant; each timed round's tokens are checked against the warm-up round's ("same_tokens_every_round").
    """
    prepare_decode_(sparse_model)
    run = greedy_decode
    contexts = {
        "dense": (dense_model, contextlib.nullcontext, run),
        "dense_kernel_0pct": (sparse_model, lambda: _nothing_dropped(sparse_model), run),
        "sparse": (sparse_model, lambda: without_spon(sparse_model), run),
        "sparse+SPON": (sparse_model, contextlib.nullcontext, run),
        "masked_dense": (sparse_model, lambda: masked_dense(sparse_model), run),
    }
    if compiled is not None:
        from spon.serving.decode import compile_decode_

        cd, cs = compiled
        prepare_decode_(cs, head=head_path(sparse_model) or "auto")  # the eager copy's timed choice: one head for both
        compile_decode_(cd)
        compile_decode_(cs)
        contexts.update({
            "dense_compiled": (cd, contextlib.nullcontext, run),
            "kernel_0pct_compiled": (cs, lambda: _nothing_dropped(cs), run),
            "sparse_compiled": (cs, lambda: without_spon(cs), run),
            "sparse+SPON_compiled": (cs, contextlib.nullcontext, run),
        })
    if llama is not None:
        contexts["llama_cpp"] = (llama, contextlib.nullcontext, lambda m, p, n: m.decode(p, n))
    seconds, tokens, compile_seconds, steady = _rounds(contexts, prompt, new_tokens, repeats, warm, progress)
    rate = {k: (new_tokens - 1) / statistics.median(v) for k, v in seconds.items()}
    spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in seconds.items()}

    measured, usage = {}, {}  # untimed: counting sends every layer through the plain path
    for name in ("sparse", "sparse+SPON"):
        model, ctx, _ = contexts[name]
        with ctx(), measure_sparsity(model) as sp:
            greedy_generate(model, prompt, new_tokens, eos_token_id=None)
        measured[name], usage[name] = sp["weighted"], sp["usage"]

    def same(a, b):
        n = next((i for i, (x, y) in enumerate(zip(tokens[a], tokens[b])) if x != y), None)
        return {"identical": n is None, "first_difference": n}

    return {
        "new_tokens": new_tokens, "prompt_tokens": int(prompt.shape[1]), "repeats": repeats,
        "loop": "spon.serving.greedy.greedy_generate: one forward per token (every row but llama.cpp's)",
        "backend": decode_backend(sparse_model), "head": head_path(sparse_model), "tokens_per_s": rate, "round_spread": spread,
        "head_on_huge_pages": head_on_huge_pages(sparse_model),
        "layers_on_huge_pages": layers_on_huge_pages(sparse_model),
        "anon_huge_page_bytes": huge_page_bytes(),  # what Linux granted this process (AnonHugePages; -1: unknown)
        "attention": {"eager": attention_of(sparse_model), **({"compiled": attention_of(compiled[1])} if compiled is not None else {})},
        "speedup_vs_dense": {k: v / rate["dense"] for k, v in rate.items()},
        **({"speedup_vs_llama_cpp": {k: v / rate["llama_cpp"] for k, v in rate.items()},
            "llama_cpp_vs_dense": same("llama_cpp", "dense")} if llama is not None else {}),
        **({"speedup_vs_dense_compiled": {k: v / rate["dense_compiled"] for k, v in rate.items()}} if compiled is not None else {}),
        "per_round": {f"vs_{ref}": round_ratios(seconds, ref) for ref in ("dense", "dense_compiled", "llama_cpp")
                      if ref in seconds},
        "spon_cost": rate["sparse"] / rate["sparse+SPON"] - 1.0,
        "sparsity_measured": measured,
        "byte_bound": {k: byte_bound(sparse_model, v, usage[k]) for k, v in measured.items()},
        "byte_bound_note": "weight bytes per token, dense over sparse at the measured sparsity (dense head included; each "
                           "sparse layer's bytes times the share of tokens that reached it, k/E for experts): the "
                           "speed-up over an equally efficient dense step if reading weights were all a step did",
        "sparsity_measured_note": "weight columns skipped, prompt and generated tokens of one eager run (SPON's "
                                  "vectors restore activations, so more entries pass the same thresholds)",
        "kernel_vs_masked_dense": same("sparse+SPON", "masked_dense"),
        "kernel_0pct_vs_dense": same("dense_kernel_0pct", "dense"),
        **({"compiled_vs_eager": {k: same(k, k.replace("_compiled", "").replace("kernel_0pct", "dense_kernel_0pct"))
                                  for k in contexts if k.endswith("_compiled")},
            "compile_seconds": compile_seconds,
            "guards": "differentiating only after the warm-up round (decode.warm_guards)" if warm else "all"}
           if compiled is not None else {}),
        "same_tokens_every_round": steady,
        "seconds": seconds,
    }


def bench_decode_quantized(models: dict[str, nn.Module], prompt: torch.Tensor, *, new_tokens: int = 64, repeats: int = 3,
                           progress: bool = True, llama=None, warm: bool = True) -> dict:
    """tokens/s of models served from quantized weights (and llama.cpp on the same file or type), rounds alternated as
    in `bench_decode`. models: row name -> a model ready to decode (rows ending in "_compiled" are compiled; their
    first round compiles and is timed apart)."""
    contexts = {name: (m, contextlib.nullcontext, greedy_decode) for name, m in models.items()}
    if llama is not None:
        contexts["llama_cpp"] = (llama, contextlib.nullcontext, lambda m, p, n: m.decode(p, n))
    seconds, tokens, compile_seconds, _ = _rounds(contexts, prompt, new_tokens, repeats, warm, progress)
    rate = {k: (new_tokens - 1) / statistics.median(v) for k, v in seconds.items()}
    first = {k: next((i for i, (x, y) in enumerate(zip(v, tokens[next(iter(tokens))])) if x != y), None)
             for k, v in tokens.items()}
    return {
        "new_tokens": new_tokens, "prompt_tokens": int(prompt.shape[1]), "repeats": repeats, "tokens_per_s": rate,
        "per_round": {f"vs_{ref}": round_ratios(seconds, ref) for ref in ("llama_cpp", "dense_float_compiled")
                      if ref in seconds},
        "compile_seconds": compile_seconds, "first_token_differing_from_first_row": first, "seconds": seconds,
    }


def _run_quantized(cfg: "DecodeBench", progress: bool) -> tuple[dict, dict | None]:
    """`spon bench decode --weights ...`: our quantized path at 0% and sparse+SPON, eager and compiled, HF's compiled
    dense model on the same (dequantized) values, and llama.cpp on the same file or type. Returns (the run, the
    artifact's JSON or None)."""
    from spon.bench.llama_cpp import open_llama_bench, open_llama_cpp
    from spon.io.data import load_splits
    from spon.pipeline import calibrate_model, check_weights_choice, open_model, serve_model
    from spon.serving.decode import compile_decode_

    check_weights_choice(cfg.model, cfg.weights)
    sparse_lm, meta = open_model(cfg.model, "float32", cfg.artifact, check_weights=not cfg.ignore_weights,
                                 trust_remote_code=cfg.trust_remote_code, weights=cfg.weights)
    if meta is None:
        calibrate_model(sparse_lm, load_splits(cfg.data), cfg.sparsity, calib_tokens=cfg.calib_tokens, progress=progress)
    dense_lm, _ = open_model(cfg.model, "float32", trust_remote_code=cfg.trust_remote_code, weights=cfg.weights)
    prompt = sparse_lm.tokenizer(cfg.prompt, return_tensors="pt")["input_ids"]
    served = serve_model(sparse_lm, cfg.model, cfg.weights)
    zero_lm = dataclasses.replace(dense_lm, model=copy.deepcopy(dense_lm.model))  # the same values, every input kept
    sparsify_(zero_lm.model, SparsityConfig(sparsity=0.0))
    serve_model(zero_lm, cfg.model, cfg.weights)
    models = {"quant_0pct": zero_lm.model, "quant_sparse+SPON": sparse_lm.model}
    if cfg.compile:
        torch._dynamo.reset()
        compiled = {"dense_float_compiled": dense_lm.model, "quant_0pct_compiled": copy.deepcopy(zero_lm.model),
                    "quant_sparse+SPON_compiled": copy.deepcopy(sparse_lm.model)}
        for m in compiled.values():
            compile_decode_(m)
        models.update(compiled)
    llama = (open_llama_bench(cfg.llama_bench, cfg.model, cfg.weights, cfg.llama_gguf) if cfg.llama_bench
             else open_llama_cpp(cfg.model, cfg.weights, cfg.llama_gguf))
    res = bench_decode_quantized(models, prompt, new_tokens=cfg.new_tokens, repeats=cfg.repeats, progress=progress,
                                 llama=None if isinstance(llama, str) else llama, warm=cfg.warm_guards)
    res["llama_cpp"] = {"status": llama} if isinstance(llama, str) else {
        "status": "measured", "gguf": str(llama.gguf), "threads": llama.threads, "tensor_bytes": gguf_tensor_bytes(llama.gguf)}
    res["served"] = served
    if not isinstance(llama, str):
        res["served"]["quantized_over_llama_cpp_tensor_bytes"] = served["quantized_bytes"] / res["llama_cpp"]["tensor_bytes"]
        llama.close()
    return {"dtype": "float32", "weights": cfg.weights, **res}, meta


def gguf_tensor_bytes(path) -> int:
    """Bytes of a GGUF file's tensors (the file less its header and metadata)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


@dataclass
class DecodeBench(ModelArgs):
    """`spon bench decode`: batch-1 greedy decoding, dense vs sparse vs sparse+folded SPON, tokens/s."""

    data: str = opt("pydoc", "calibration text when no artifact is given")
    artifact: str | None = opt(None, "thresholds + SPON vectors to serve (default: calibrate the sparsity, no SPON)", type="str")
    sparsity: SparsityConfig = opt(factory=SparsityConfig)
    calib_tokens: int = opt(8192, "calibration tokens for thresholds")
    dtypes: str = opt("float32,bfloat16", "comma-separated dtypes to run")
    new_tokens: int = opt(64, "greedy tokens per round")
    compile: bool = opt(False, "also torch.compile'd steps with a static KV cache: HF dense and our path (compile time apart)")
    llama_gguf: str | None = opt(None, "a GGUF for llama.cpp's dense row (needs llama-cpp-python; default: the model's own "
                                       "GGUF requantised to each dtype); one dtype per run", type="str")
    llama_bench: str | None = opt(None, "with --weights: llama.cpp's llama-bench binary for the llama.cpp row (each round "
                                        "one llama-bench run on the same file; its llama-quantize makes the other "
                                        "types), instead of the llama-cpp-python package", type="str")
    repeats: int = opt(3, "rounds after a warm-up round (median)")
    warm_guards: bool = opt(True, "time compiled rows (dense and ours alike) checking only the guards that told their "
                                  "graphs apart in the warm-up round (decode.warm_guards)")
    prompt: str = opt("In Python, a list comprehension", "the prompt")
    out: str | None = opt(None, "folder for decode.json and decode.png", type="str")


def run_decode_bench(cfg: DecodeBench, progress: bool = True) -> str:
    from spon.io.data import load_splits
    from spon.pipeline import calibrate_model, open_model
    from spon.io.plots import plot_decode
    from spon.io.models import load_model
    from spon.bench.gemv import parse_dtypes
    from spon.bench.llama_cpp import open_llama_cpp

    dtypes = [] if cfg.weights != "float" else parse_dtypes(cfg.dtypes, ("float32", "bfloat16", "float16"))
    if cfg.llama_gguf and len(dtypes) > 1:
        raise SponError(f"--llama-gguf holds one precision but --dtypes asks for {len(dtypes)}; give one dtype")
    out = ensure_writable_dir(cfg.out) if cfg.out else None
    runs, meta = {}, None
    if cfg.weights != "float":  # quantized weights: one float32 run of its own rows
        runs[f"float32 {cfg.weights}"], meta = _run_quantized(cfg, progress)
    splits = load_splits(cfg.data) if dtypes and not cfg.artifact else None
    for dtype in dtypes:
        dense_lm = load_model(cfg.model, dtype, trust_remote_code=cfg.trust_remote_code)
        sparse_lm, meta = open_model(cfg.model, dtype, cfg.artifact, check_weights=not cfg.ignore_weights,
                                     trust_remote_code=cfg.trust_remote_code)
        if meta is None:
            calibrate_model(sparse_lm, splits, cfg.sparsity, calib_tokens=cfg.calib_tokens, progress=progress)
        prompt = dense_lm.tokenizer(cfg.prompt, return_tensors="pt")["input_ids"]
        compiled = None
        if cfg.compile:  # separate copies: a compiled forward replaces the model's own
            torch._dynamo.reset()  # graphs of the previous dtype are not reused
            compiled = (copy.deepcopy(dense_lm.model), copy.deepcopy(sparse_lm.model))
        llama = open_llama_cpp(cfg.model, dtype, cfg.llama_gguf)
        runs[dtype] = bench_decode(dense_lm.model, sparse_lm.model, prompt, new_tokens=cfg.new_tokens, repeats=cfg.repeats,
                                   progress=progress, compiled=compiled, llama=None if isinstance(llama, str) else llama,
                                   warm=cfg.warm_guards)
        runs[dtype]["llama_cpp"] = ({"status": llama} if isinstance(llama, str) else
                                    {"status": "measured", "gguf": str(llama.gguf), "threads": llama.threads})
        if not isinstance(llama, str):
            llama.close()
        del dense_lm, sparse_lm, compiled, llama
    target = meta["sparsity"]["sparsity"] if meta else cfg.sparsity.sparsity
    res = {"benchmark": "decode", "model": {"name": cfg.model}, "artifact": cfg.artifact, "sparsity": target, "runs": runs,
           "machine": machine()}
    if out:
        plot_decode(res, out)
    return write_json(cfg.out, "decode.json", res)

"""`spon bench gemv`: the sparse GEMV kernel against dense `F.linear`, itself at 0%, and plain torch; the quantized
kernel (GGUF block types) against itself at 0% and the float32 kernel at 0%.

Batch 1, measured side by side in one run: every repetition times each method once, in turn, on the
next weight copy and the next input vector, so drifting machine load hits all methods alike, weights
stream from memory (copies together exceed the last-level cache many times over) and every call sees
a fresh zero pattern. Reports median seconds, ratios, and the GB/s of weights read next to the
machine's read bandwidth measured in the same run.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spon.io.atomic import ensure_writable_dir
from spon.config import opt
from spon.errors import SponError
from spon.serving.kernels import GemvPlan, cpu_kernel, reference_gemv
from spon.serving.machine import machine
from spon.serving.kernels.quant_cpu import QuantGemv
from spon.serving.quantized import QUANTIZABLE, quantize
from spon.bench.output import write_json

__all__ = ["bench_gemv", "read_bandwidth", "POOL_BYTES", "GemvBench", "run_gemv_bench", "parse_shapes", "parse_dtypes"]

POOL_BYTES = 512 * 2**20  # weight copies rotated per shape: 16x a 32 MiB L3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUANT_TYPES = tuple(t.lower() for t in QUANTIZABLE)  # GGUF block types, quantized from the same random weights


def read_bandwidth(seconds: float = 1.0, size_bytes: int = 512 * 2**20) -> float:
    """GB/s of a plain parallel sum over a buffer much larger than the cache (best of repeated passes)."""
    k = cpu_kernel()
    buf = torch.rand(size_bytes // 4)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        if k is not None:
            k.read_sum(buf)
        else:
            buf.sum()
        best = min(best, time.perf_counter() - t0)
    return size_bytes / best / 1e9


def _tau(sparsity: float) -> float:
    """|x| quantile of a standard normal: inputs drawn N(0, 1) have about `sparsity` of entries <= tau."""
    return -1.0 if sparsity <= 0 else math.sqrt(2.0) * torch.erfinv(torch.tensor(sparsity)).item()


def bench_gemv(shapes: list[tuple[int, int]], sparsities: list[float], dtypes: list[str], *, repeats: int = 20,
               seed: int = 0, progress: bool = True, pool_bytes: int = POOL_BYTES) -> dict:
    """shapes: (out_features, in_features). Returns {"bandwidth_gbs", "rows": [...]} with one row per case."""
    if cpu_kernel() is None:
        raise SponError("the CPU kernel is not available (see the warning above: a C compiler is needed); nothing to benchmark")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    bandwidth = [read_bandwidth(size_bytes=pool_bytes)]
    cases = [(d, s) for d in dtypes for s in shapes]
    for dname, (n_out, n_in) in tqdm(cases, desc="gemv", disable=not progress):
        if dname in QUANT_TYPES:
            rows += _quant_rows(dname, n_out, n_in, sparsities, repeats, gen, pool_bytes)
            bandwidth.append(read_bandwidth(0.5, pool_bytes))
            continue
        dtype = DTYPES[dname]
        elsize = torch.tensor([], dtype=dtype).element_size()
        copies = max(8, math.ceil(pool_bytes / (n_out * n_in * elsize)))
        ws = [(torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in)).to(dtype) for _ in range(copies)]
        wts = [w.t().contiguous() for w in ws]
        xs = [torch.randn(n_in, generator=gen).to(dtype) for _ in range(16)]
        bias = torch.randn(n_out, generator=gen).to(dtype)
        plans0 = [GemvPlan(wt, bias, -1.0, dtype) for wt in wts]  # prepared once per layer, as in decoding
        plans = None
        for s in sparsities:
            tau = _tau(s)
            plans = [GemvPlan(wt, bias, tau, dtype) for wt in wts]
            methods = {  # c: the weight copy of this call; no two calls in a row read the same copy (a cache-hot
                # copy would read several times faster than memory allows)
                "dense_F.linear": lambda i, c: F.linear(xs[i % 16].view(1, -1), ws[c], bias),
                "kernel": lambda i, c: plans[c](xs[i % 16]),
                "kernel_0pct": lambda i, c: plans0[c](xs[i % 16]),
                "torch_reference": lambda i, c: reference_gemv(xs[i % 16], wts[c], bias, tau),
            }
            med = _timed(methods, repeats, copies)
            kept = sum(float((x.abs() > torch.tensor(tau).to(dtype)).float().mean()) for x in xs) / len(xs)
            full_bytes = n_out * n_in * elsize
            rows.append({
                "dtype": dname, "out": n_out, "in": n_in, "sparsity": s, "measured_sparsity": 1 - kept,
                "seconds": med,
                "speedup_vs_dense": med["dense_F.linear"] / med["kernel"],
                "speedup_vs_kernel_0pct": med["kernel_0pct"] / med["kernel"],
                "speedup_vs_torch_reference": med["torch_reference"] / med["kernel"],
                "gbs_kernel": full_bytes * kept / med["kernel"] / 1e9,
                "gbs_kernel_0pct": full_bytes / med["kernel_0pct"] / 1e9,
                "gbs_dense": full_bytes / med["dense_F.linear"] / 1e9,
                "weight_copies": copies,
            })
        del ws, wts, plans, plans0
        bandwidth.append(read_bandwidth(0.5, pool_bytes))
    return {"pool_bytes": pool_bytes, "bandwidth_gbs": {"before": bandwidth[0], "between_cases": bandwidth[1:], "median": statistics.median(bandwidth)},
            "threads": torch.get_num_threads(), "repeats": repeats, "rows": rows}


def _timed(methods: dict, repeats: int, copies: int) -> dict[str, float]:
    """Median seconds of each method, called in turn each round on the next weight copy (two warm-up rounds)."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    for i in range(repeats + 2):
        for m, (name, fn) in enumerate(methods.items()):
            t0 = time.perf_counter()
            fn(i, (i * len(methods) + m) % copies)
            dt = time.perf_counter() - t0
            if i >= 2:
                times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def _quant_rows(qtype: str, n_out: int, n_in: int, sparsities: list[float], repeats: int, gen, pool_bytes: int) -> list:
    """One quantized type: the quantized kernel at each sparsity against itself at 0% and the float32 kernel at 0%."""
    w = torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in)
    qw = quantize(w, qtype)
    copies = max(8, math.ceil(pool_bytes / qw.nbytes))
    qws = [dataclasses.replace(qw, **{f: getattr(qw, f).clone() for f in ("q", "scale", "minimum", "hb")
                                      if getattr(qw, f) is not None}) for _ in range(copies)]
    fcopies = max(2, math.ceil(pool_bytes / (n_out * n_in * 4)))
    fwts = [(w + 0).t().contiguous() for _ in range(fcopies)]
    xs = [torch.randn(n_in, generator=gen) for _ in range(16)]
    bias = torch.randn(n_out, generator=gen)
    g0 = [QuantGemv(q, bias, -1.0) for q in qws]
    f0 = [GemvPlan(wt, bias, -1.0, torch.float32) for wt in fwts]
    rows = []
    for s in sparsities:
        tau = _tau(s)
        gs = [QuantGemv(q, bias, tau) for q in qws]
        med = _timed({
            "kernel": lambda i, c: gs[c](xs[i % 16]),
            "kernel_0pct": lambda i, c: g0[c](xs[i % 16]),
            "float32_kernel_0pct": lambda i, c: f0[c % fcopies](xs[i % 16]),
        }, repeats, copies)
        kept = sum(float((x.abs() > tau).float().mean()) for x in xs) / len(xs)
        rows.append({
            "dtype": qtype, "out": n_out, "in": n_in, "sparsity": s, "measured_sparsity": 1 - kept, "seconds": med,
            "weight_bytes": qw.nbytes, "speedup_vs_kernel_0pct": med["kernel_0pct"] / med["kernel"],
            "speedup_vs_float32_kernel_0pct": med["float32_kernel_0pct"] / med["kernel"],
            "gbs_kernel": qw.nbytes * kept / med["kernel"] / 1e9, "gbs_kernel_0pct": qw.nbytes / med["kernel_0pct"] / 1e9,
            "weight_copies": copies,
        })
    return rows


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'4096x14336,14336x4096' -> [(4096, 14336), (14336, 4096)] (out x in)."""
    try:
        shapes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise SponError(f"shapes {text!r} must look like OUTxIN[,OUTxIN...], e.g. 4096x14336")
    return shapes  # type: ignore[return-value]


def parse_dtypes(text: str, allowed: tuple[str, ...]) -> list[str]:
    values = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in values if d not in allowed]
    if not values or bad:
        raise SponError(f"dtypes {text!r}: use a comma-separated list of {', '.join(allowed)}")
    return values


@dataclass
class GemvBench:
    """`spon bench gemv`: the sparse GEMV kernel vs dense F.linear, itself at 0% and plain torch; GB/s."""

    shapes: str = opt("4096x14336,14336x4096", "OUTxIN,... weight shapes")
    sparsities: tuple[float, ...] = opt((0.0, 0.25, 0.5, 0.7, 0.9), "comma-separated sparsities", type="sparsities")
    dtypes: str = opt("float32,bfloat16", "comma-separated weight dtypes: float32, bfloat16, and the GGUF block types "
                      "q8_0, q4_0, q4_1, q5_0 (each against itself at 0% and the float32 kernel at 0%)")
    repeats: int = opt(20, "calls per case (median)")
    out: str | None = opt(None, "folder for gemv.json and gemv.png", type="str")


def run_gemv_bench(cfg: GemvBench, progress: bool = True) -> str:
    from spon.io.plots import plot_gemv

    shapes, dtypes = parse_shapes(cfg.shapes), parse_dtypes(cfg.dtypes, (*DTYPES, *QUANT_TYPES))
    out = ensure_writable_dir(cfg.out) if cfg.out else None
    res = {"benchmark": "gemv", **bench_gemv(shapes, list(cfg.sparsities), dtypes, repeats=cfg.repeats, progress=progress),
           "machine": machine()}
    if out:
        plot_gemv(res, out)
    return write_json(cfg.out, "gemv.json", res)

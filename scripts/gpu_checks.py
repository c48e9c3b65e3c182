"""The GPU checks, in a few minutes, for a session that is lent a CUDA machine (never part of the tests or CI).

1. The Triton sparse GEMV against cuBLAS (F.linear) on a 4096x14336 bf16 layer (Llama-3-8B's MLP) and its
   transpose, at 0/50/70/90% sparsity: correctness against the float64 reference, median time over CUDA events,
   the speed-up and the GB/s of weights read.
2. `spon bench decode --compile` on SmolLM2 in bf16 on the GPU: HF eager and compiled dense, our path at 0%,
   sparse and sparse + folded SPON (compile time apart).

    python scripts/gpu_checks.py --out gpu-results      # writes gemv_gpu.json, decode.json, decode.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def time_cuda(fn, repeats: int = 50) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gemv_checks() -> list[dict]:
    from spon.kernels.triton_gemv import triton_gemv

    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for n_out, n_in in [(14336, 4096), (4096, 14336)]:
        w = (torch.randn(n_out, n_in, device="cuda", generator=g) / math.sqrt(n_in)).to(torch.bfloat16)
        wt = w.t().contiguous()
        x = torch.randn(n_in, device="cuda", generator=g).to(torch.bfloat16)
        dense = time_cuda(lambda: F.linear(x.view(1, -1), w))
        for s in (0.0, 0.5, 0.7, 0.9):
            tau = -1.0 if s == 0 else math.sqrt(2.0) * torch.erfinv(torch.tensor(s)).item()
            keep = (x.abs() > tau).double()
            want = (x.double() * keep) @ wt.double()
            got = triton_gemv(x, wt, None, tau)
            err = float((got.double() - want).abs().max() / want.abs().max())
            t = time_cuda(lambda: triton_gemv(x, wt, None, tau))
            rows.append({"out": n_out, "in": n_in, "sparsity": s, "kept": float(keep.mean()), "rel_max_error": err,
                         "cublas_s": dense, "triton_s": t, "speedup_vs_cublas": dense / t,
                         "gbs_triton": n_out * n_in * 2 * float(keep.mean()) / t / 1e9, "gbs_cublas": n_out * n_in * 2 / dense / 1e9})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-results")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_checks: no CUDA device here; run this on a GPU machine", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "gemv": gemv_checks()}
    (out / "gemv_gpu.json").write_text(json.dumps(res, indent=2))
    if not args.skip_decode:
        from spon.bench.decode import DecodeBench, run_decode_bench

        run_decode_bench(DecodeBench(dtypes="bfloat16", compile=True, out=str(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

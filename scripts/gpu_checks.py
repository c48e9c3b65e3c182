"""The GPU checks, in a few minutes, for a session that is lent a CUDA machine (never part of the tests or CI).

1. Correctness of the Triton sparse GEMV on the GPU: fp16/bf16/fp32, odd shapes (every tail), with and without bias,
   several thresholds, against the float64 reference at the tests' tolerances; and `torch.ops.spon.sparse_gemv` on
   CUDA tensors through `torch.library.opcheck`.
2. The Triton sparse GEMV against cuBLAS (F.linear) on a 4096x14336 bf16 layer (Llama-3-8B's MLP) and its
   transpose, at 0/50/70/90% sparsity: correctness against the float64 reference, median time over CUDA events,
   the speed-up and the GB/s of weights read.
3. `spon bench decode` in bf16 on the GPU, with `--compile` first (compiled/decode.json: HF eager and compiled dense,
   our path at 0%, sparse and sparse + folded SPON, compile time apart), then eager alone (eager/decode.json).

    python scripts/gpu_checks.py --out gpu-results      # gemv_gpu.json, compiled/ and eager/ decode.json + decode.png

Time it needs on an H200 (2026-12-04, torch 2.11): the kernel checks ~1 minute; the compiled decode of SmolLM2's shapes
over 5 minutes (the warm-up round with its compiles 212 s, then the rounds and an untimed sparsity count); the eager
decode ~2 minutes. Give a compiled run 420 s.

A machine that cannot reach a model hub or hold the model's weights can time a model of the same shapes with random
weights: `--shapes DIR` (a folder with the model's config.json and tokenizer, no weights) builds one. Speed depends
on the shapes, not on the weight values; such a run says nothing about accuracy, and with no artifact the SPON row
holds no trained vectors (its folded bias costs what a trained one does).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=1e-2, rtol=1e-2)}


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


def time_graph(fn, calls: int = 10, repeats: int = 20) -> float:
    """Seconds per call of `fn` replayed from a CUDA graph of `calls` calls: the GPU's time alone, without the
    Python and launch cost that `time_cuda` includes when a call's launch takes longer than its kernel."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return time_cuda(graph.replay, repeats) / calls


def gaussian_case(x: torch.Tensor, wt: torch.Tensor, s: float) -> tuple[float, torch.Tensor]:
    """The threshold that drops a fraction s of standard-normal inputs (-1: none) and the float64 reference output."""
    tau = -1.0 if s == 0 else math.sqrt(2.0) * torch.erfinv(torch.tensor(s)).item()
    return tau, (x.double() * (x.abs() > tau).double()) @ wt.double()


def kernel_sweep() -> list[dict]:
    """The Triton kernel's block sizes and warps on the two 4096x14336 bf16 shapes at 0/50/90% sparsity, GPU time
    alone (CUDA graph replay), against cuBLAS timed the same way."""
    from spon.serving.kernels.triton_gemv import triton_gemv

    rows = []
    g = torch.Generator(device="cuda").manual_seed(2)
    configs = [(bn, bk, kc, nw) for bn in (64, 128, 256) for bk in (16, 32, 64) for kc in (256, 1024) for nw in (4, 8)]
    configs.insert(0, (128, 32, 512, 4))  # the block sizes before this sweep (2026-12-04); the new default is in the grid
    for n_out, n_in in [(14336, 4096), (4096, 14336)]:
        w = (torch.randn(n_out, n_in, device="cuda", generator=g) / math.sqrt(n_in)).to(torch.bfloat16)
        wt = w.t().contiguous()
        x = torch.randn(n_in, device="cuda", generator=g).to(torch.bfloat16)
        cublas = time_graph(lambda: F.linear(x.view(1, -1), w))
        for s in (0.0, 0.5, 0.9):
            tau, want = gaussian_case(x, wt, s)
            for bn, bk, kc, nw in configs:
                def call():
                    return triton_gemv(x, wt, None, tau, block_n=bn, block_k=bk, k_chunk=kc, num_warps=nw)
                err = float((call().double() - want).abs().max() / want.abs().max())
                t = time_graph(call)
                rows.append({"out": n_out, "in": n_in, "sparsity": s, "block_n": bn, "block_k": bk, "k_chunk": kc,
                             "num_warps": nw, "rel_max_error": err, "triton_s": t, "cublas_s": cublas,
                             "speedup_vs_cublas": cublas / t})
            best = max((r for r in rows if r["out"] == n_out and r["sparsity"] == s), key=lambda r: r["speedup_vs_cublas"])
            old = next(r for r in rows if r["out"] == n_out and r["sparsity"] == s and r["block_k"] == 32 and r["k_chunk"] == 512)
            print(json.dumps({"shape": [n_out, n_in], "sparsity": s, "cublas_us": cublas * 1e6,
                              "old_128_32_512_us": old["triton_s"] * 1e6, "best": best}), flush=True)
    return rows


def correctness_checks() -> dict:
    """Every dtype, odd shapes, bias or none, three thresholds: the Triton kernel and the operator against float64."""
    from spon.serving.kernels import op  # noqa: F401  registers torch.ops.spon.*
    from spon.serving.kernels.triton_gemv import triton_gemv

    g = torch.Generator(device="cuda").manual_seed(1)
    checked, failures = 0, []
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        for n_out, n_in in [(1, 1), (7, 3), (33, 65), (576, 1536), (1000, 17), (34, 21), (4864, 896)]:
            for with_bias in (False, True):
                for tau in (-1.0, 0.3, 1.0):
                    x = torch.randn(n_in, device="cuda", generator=g).to(dt)
                    wt = (torch.randn(n_in, n_out, device="cuda", generator=g) / math.sqrt(n_in)).to(dt)
                    bias = torch.randn(n_out, device="cuda", generator=g).to(dt) if with_bias else None
                    keep = x.abs() > torch.tensor(tau).to(dt)
                    want = (x.double() * keep) @ wt.double()
                    want = (want + bias.double() if bias is not None else want).to(dt)
                    for name, got in (("triton", triton_gemv(x, wt, bias, tau)),
                                      ("op", torch.ops.spon.sparse_gemv(x.view(1, -1), wt, bias,
                                                                         torch.tensor(tau, device="cuda")).view(-1))):
                        try:
                            torch.testing.assert_close(got, want, **TOL[dt])
                        except AssertionError as e:
                            failures.append({"kernel": name, "dtype": str(dt), "out": n_out, "in": n_in, "bias": with_bias,
                                             "tau": tau, "error": str(e).splitlines()[0]})
                        checked += 1
    x = torch.randn(1, 896, device="cuda", dtype=torch.bfloat16)
    wt = torch.randn(896, 4864, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.spon.sparse_gemv.default, (x, wt, None, torch.tensor(0.5, device="cuda")))
    res = {"checked": checked, "failures": failures, "opcheck": "passed"}
    print(json.dumps({k: v for k, v in res.items() if k != "failures"} | {"failed": len(failures)}), flush=True)
    return res


def gemv_checks() -> list[dict]:
    from spon.serving.kernels.triton_gemv import triton_gemv

    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for n_out, n_in in [(14336, 4096), (4096, 14336)]:
        w = (torch.randn(n_out, n_in, device="cuda", generator=g) / math.sqrt(n_in)).to(torch.bfloat16)
        wt = w.t().contiguous()
        x = torch.randn(n_in, device="cuda", generator=g).to(torch.bfloat16)
        dense = time_cuda(lambda: F.linear(x.view(1, -1), w))
        for s in (0.0, 0.5, 0.7, 0.9):
            tau, want = gaussian_case(x, wt, s)
            keep = (x.abs() > tau).double()
            got = triton_gemv(x, wt, None, tau)
            err = float((got.double() - want).abs().max() / want.abs().max())
            t = time_cuda(lambda: triton_gemv(x, wt, None, tau))
            rows.append({"out": n_out, "in": n_in, "sparsity": s, "kept": float(keep.mean()), "rel_max_error": err,
                         "cublas_s": dense, "triton_s": t, "speedup_vs_cublas": dense / t,
                         "gbs_triton": n_out * n_in * 2 * float(keep.mean()) / t / 1e9, "gbs_cublas": n_out * n_in * 2 / dense / 1e9})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def random_weights_model(shapes: str, folder: Path) -> str:
    """A model folder with `shapes`' config and tokenizer and random weights (seed 0): for timing only."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shapes))
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(shapes).save_pretrained(folder)
    return str(folder)


def decode_checks(model: str, out: Path, dtypes: str, repeats: int, which: list[str]) -> None:
    from spon.bench.decode import DecodeBench, run_decode_bench

    for compile_, sub in [(s == "compiled", s) for s in which]:
        folder = out / sub
        run_decode_bench(DecodeBench(model=model, dtypes=dtypes, compile=compile_, repeats=repeats, out=str(folder)))
        print(f"decode ({sub}) written to {folder}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-results")
    ap.add_argument("--model", default="smollm2", help="the model `spon bench decode` times (default: smollm2)")
    ap.add_argument("--shapes", default=None, help="time a model of this folder's config and tokenizer with random "
                                                   "weights instead of --model (no hub, no weights: speed only)")
    ap.add_argument("--dtypes", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-kernel", action="store_true", help="no correctness or GEMV timing (decode only)")
    ap.add_argument("--sweep", action="store_true", help="also time the Triton kernel's block sizes (kernel_sweep.json)")
    ap.add_argument("--decode", default="compiled,eager", help="which decode benches, in order: compiled, eager or both")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_checks: no CUDA device here; run this on a GPU machine", file=sys.stderr)
        return 2
    import transformers
    import triton

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "transformers": transformers.__version__}
    if args.sweep:
        (out / "kernel_sweep.json").write_text(json.dumps({**res, "rows": kernel_sweep()}, indent=2))
    if not args.skip_kernel:
        res["correctness"] = correctness_checks()
        (out / "gemv_gpu.json").write_text(json.dumps(res, indent=2))
        res["gemv"] = gemv_checks()
        (out / "gemv_gpu.json").write_text(json.dumps(res, indent=2))
    if not args.skip_decode:
        model = random_weights_model(args.shapes, Path("/tmp/spon-random-weights")) if args.shapes else args.model
        decode_checks(model, out, args.dtypes, args.repeats, [w.strip() for w in args.decode.split(",") if w.strip()])
    return 0


if __name__ == "__main__":
    sys.exit(main())

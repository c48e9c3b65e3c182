"""Sparse GEMV kernels match the plain-torch reference; the decode path matches the masked-dense path."""


import pytest
import torch

import spon
from conftest import calibrated, make_model, needs_cc, random_ids
from spon.serving.decode import decode_backend, masked_dense, prepare_decode_
from spon.serving.kernels import cpu, reference_gemv, sparse_gemv

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=1e-2, rtol=1e-2)}
SHAPES = [(1, 1), (7, 3), (33, 65), (576, 1536), (1000, 17), (34, 21)]  # (out, in): odd sizes hit every tail loop,
# even outputs the bf16 kernel's paired loop (34: a pass shorter than a cache line)


def cases(dtypes):
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for n_out, n_in in SHAPES:
            x = torch.randn(n_in, generator=g).to(dtype)
            wt = torch.randn(n_in, n_out, generator=g).to(dtype)
            bias = torch.randn(n_out, generator=g).to(dtype)
            for s in (0.0, 0.3, 0.5, 0.7, 0.95):
                tau = -1.0 if s == 0 else float(x.float().abs().quantile(s))
                yield dtype, x, wt, bias, tau
            yield dtype, torch.zeros_like(x), wt, bias, 0.5  # all-zero input: nothing kept
            yield dtype, x, wt, None, -1.0  # all kept, no bias
            yield dtype, x, wt, bias, float(x.float().abs().max()) + 1  # all dropped: y = b


def expected(x, wt, bias, tau):
    keep = x.abs() > torch.tensor(tau).to(x.dtype)
    y = (x.double() * keep) @ wt.double()
    return (y + bias.double() if bias is not None else y).to(x.dtype)


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_matches_reference(dtype):
    assert cpu.cpu_kernel() is not None
    for dt, x, wt, bias, tau in cases([dtype]):
        want = expected(x, wt, bias, tau)
        torch.testing.assert_close(sparse_gemv(x, wt, bias, tau), want, **TOL[dt])
        torch.testing.assert_close(reference_gemv(x, wt, bias, tau), want, **TOL[dt])


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_head_kernel_matches_linear(dtype):
    """The output head's dense GEMV on nn.Linear's [out, in] layout: W x + b, for any row count (tails of four)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from spon.serving.kernels import op  # noqa: F401

    g = torch.Generator().manual_seed(1)
    for n_out, n_in in [(1, 1), (7, 3), (33, 65), (1000, 17), (70, 34), (4099, 576)]:  # odd, paired, AVX512-BF16 inputs
        x = torch.randn(1, 1, n_in, generator=g).to(dtype)
        w, bias = torch.randn(n_out, n_in, generator=g).to(dtype), torch.randn(n_out, generator=g).to(dtype)
        want = (x.double() @ w.double().t() + bias.double()).to(dtype)
        got = torch.ops.spon.dense_gemv(x, w, bias)
        assert got.shape == (1, 1, n_out) and got.dtype == dtype
        torch.testing.assert_close(got, want, **TOL[dtype])
        torch.testing.assert_close(torch.ops.spon.dense_gemv(x, w, None), (x.double() @ w.double().t()).to(dtype), **TOL[dtype])
        if dtype == torch.bfloat16 and n_in % 32:  # the fp32 sum rounded once, like torch: exact against a float32
            y32 = torch.ops.spon.dense_gemv(x.float(), w, bias)  # product rounded (in % 32 == 0 may sum in another order)
            assert torch.equal(got, y32.to(torch.bfloat16))
    torch.library.opcheck(torch.ops.spon.dense_gemv.default, (x, w, bias))
    with FakeTensorMode() as mode:
        fake = torch.ops.spon.dense_gemv(mode.from_tensor(x), mode.from_tensor(w), None)
    assert fake.shape == (1, 1, w.shape[0])


@needs_cc
def test_cpu_kernel_counts_kept_inputs():
    x = torch.tensor([0.1, -2.0, 0.0, 3.0, -0.5])
    y, kept = cpu.cpu_kernel().gemv(x, torch.ones(5, 2), None, 0.4)
    assert kept == 3 and torch.equal(y, torch.tensor([0.5, 0.5]))  # -2 + 3 - 0.5


@needs_cc
def test_cpu_kernel_bf16_output_rounds_like_torch():
    """A bf16 x and y go through the kernel directly; y is the fp32 accumulator rounded to nearest-even."""
    k = cpu.cpu_kernel()
    g = torch.Generator().manual_seed(5)
    wt = torch.randn(300, 517, generator=g).to(torch.bfloat16)
    bias = torch.randn(517, generator=g)
    for scale in (1.0, 1e-3, 1e3):
        x = (torch.randn(300, generator=g) * scale).to(torch.bfloat16)
        y16, kept16 = k.gemv(x, wt, bias, 0.3 * scale)
        y32, kept32 = k.gemv(x.float(), wt, bias, 0.3 * scale)
        assert y16.dtype == torch.bfloat16 and kept16 == kept32
        assert torch.equal(y16, y32.to(torch.bfloat16))  # same sums, same rounding as torch
    x, want = torch.randn(300, generator=g), None
    for threads in (1, 2, 3, 5):  # each thread sums a share of the kept rows; the shares are added at the end
        y, _ = k.gemv(x, wt, bias, 0.3, threads=threads)
        want = want if want is not None else expected(x, wt.float(), bias, 0.3)
        torch.testing.assert_close(y, want, **TOL[torch.float32])


@needs_cc
def test_decode_plan_follows_threshold_and_bias_changes():
    """The per-layer plan is prepared once; changing the threshold or folding new vectors rebuilds it."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    m = spon.SparseLinear.from_linear(lin)
    m.threshold.fill_(0.5)
    prepare_decode_(m, fold=False)
    x = torch.randn(1, 64)
    with torch.no_grad():
        first = m(x)
        torch.testing.assert_close(first, lin(x * (x.abs() > 0.5)))
        m.threshold.fill_(1.0)
        torch.testing.assert_close(m(x), lin(x * (x.abs() > 1.0)))
        m.alpha.fill_(0.1)  # unfolded vectors: the plain path, not a stale plan
        torch.testing.assert_close(m(x), lin(x * (x.abs() > 1.0) + 0.1))
        spon.fold_(m)
        torch.testing.assert_close(m(x), lin(x * (x.abs() > 1.0) + 0.1))
        assert m.decode.plan is not None  # folded: the kernel again
        with spon.without_spon(m):  # folded bias set aside: plain bias, through the kernel
            torch.testing.assert_close(m(x), lin(x * (x.abs() > 1.0)))
        torch.testing.assert_close(m(x), lin(x * (x.abs() > 1.0) + 0.1))
    m2 = spon.SparseLinear.from_linear(lin)  # unfolded vectors, switched off and on again
    m2.threshold.fill_(0.5)
    prepare_decode_(m2, fold=False)
    with torch.no_grad():
        m2.alpha.fill_(0.2)
        with spon.without_spon(m2):
            torch.testing.assert_close(m2(x), lin(x * (x.abs() > 0.5)))
        torch.testing.assert_close(m2(x), lin(x * (x.abs() > 0.5) + 0.2))
        import copy
        import pickle

        assert m.decode.plan is not None
        for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):  # the prepared kernel call does not travel
            assert twin.decode.plan is None
            torch.testing.assert_close(twin(x), lin(x * (x.abs() > 1.0) + 0.1))
            assert twin.decode.plan is not None


def test_fallback_warns_and_still_computes(monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(cpu.shutil, "which", lambda name: None)
    cpu.cpu_kernel.cache_clear()
    try:
        with pytest.warns(UserWarning, match="falls back to plain torch"):
            assert cpu.cpu_kernel() is None
        x, wt = torch.randn(40), torch.randn(40, 8)
        torch.testing.assert_close(sparse_gemv(x, wt, None, 0.5), expected(x, wt, None, 0.5), **TOL[torch.float32])
    finally:
        cpu.cpu_kernel.cache_clear()


@pytest.mark.slow
def test_triton_kernel_matches_reference_in_interpreter():
    """Triton reads TRITON_INTERPRET when it is imported, so the check runs in a fresh process."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = (
        "import torch, test_kernels as t\n"
        "from spon.serving.kernels import triton_gemv as tg\n"
        "assert tg.triton_available()\n"
        "n = 0\n"
        "for dt, x, wt, bias, tau in t.cases([torch.float16, torch.bfloat16, torch.float32]):\n"
        "    if wt.numel() > 100_000: continue\n"
        "    torch.testing.assert_close(tg.triton_gemv(x, wt, bias, tau), t.expected(x, wt, bias, tau), **t.TOL[dt]); n += 1\n"
        "print('checked', n)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), str(here.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checked 120" in proc.stdout


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_path_matches_masked_dense(arch, dtype):
    model = make_model(arch).to(dtype)
    cfg = spon.SparsityConfig(sparsity=0.5)
    spon.sparsify_(model, cfg)
    spon.calibrate_(model, [random_ids(2, 32, seed=s) for s in range(2)], cfg, progress=False)
    g = torch.Generator().manual_seed(3)
    for m in spon.sparse_modules(model).values():  # some SPON vectors, so the folded bias is exercised
        m.alpha.copy_(torch.randn(m.in_features, generator=g) * 0.05)
    prompt = random_ids(1, 12, seed=4)
    from spon.bench.decode import greedy_decode

    spon.fold_(model)  # in bf16 folding itself rounds; compare the decode layout against the folded model
    with torch.no_grad():
        want_prefill = model(input_ids=prompt).logits
    head = model.get_output_embeddings()
    prepare_decode_(model)
    assert decode_backend(model) == "cpu"
    assert all(not m.alpha.any() and m.folded for m in spon.sparse_modules(model).values())
    from spon.serving.decode_head import DecodeHead

    assert isinstance(model.get_output_embeddings(), DecodeHead) and model.get_output_embeddings().weight is head.weight
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=prompt).logits, want_prefill, **TOL[dtype])  # prefill: dense matmul
        step = prompt[:, :1]
        got = model(input_ids=step).logits  # one token: the kernel
        with masked_dense(model):
            ref = model(input_ids=step).logits
    torch.testing.assert_close(got, ref, **TOL[dtype])
    with masked_dense(model):
        ref_tokens, _, _ = greedy_decode(model, prompt, 8)
    tokens, _, _ = greedy_decode(model, prompt, 8)
    assert len(tokens) == 8 and tokens == ref_tokens
    spon.unsparsify_(model)  # the plain head back, on the same weight
    assert type(model.get_output_embeddings()) is torch.nn.Linear and model.get_output_embeddings().weight is head.weight


@needs_cc
def test_bench_gemv_reports_ratios_and_bandwidth(tmp_path):
    from spon.bench.gemv import bench_gemv
    from spon.io.plots import plot_gemv

    import statistics

    r = bench_gemv([(64, 256)], [0.0, 0.5], ["float32", "bfloat16"], repeats=3, progress=False, pool_bytes=4 * 2**20)
    assert [(x["dtype"], x["sparsity"]) for x in r["rows"]] == [("float32", 0.0), ("float32", 0.5), ("bfloat16", 0.0), ("bfloat16", 0.5)]
    bw = r["bandwidth_gbs"]
    assert bw["median"] == statistics.median([bw["before"], *bw["between_cases"]]) and len(bw["between_cases"]) == 2
    for x in r["rows"]:  # every ratio and rate is what its medians say
        sec, size = x["seconds"], 64 * 256 * (4 if x["dtype"] == "float32" else 2)
        assert x["speedup_vs_dense"] == pytest.approx(sec["dense_F.linear"] / sec["kernel"])
        assert x["speedup_vs_kernel_0pct"] == pytest.approx(sec["kernel_0pct"] / sec["kernel"])
        assert x["gbs_kernel"] == pytest.approx(size * (1 - x["measured_sparsity"]) / sec["kernel"] / 1e9)
        assert x["gbs_dense"] == pytest.approx(size / sec["dense_F.linear"] / 1e9)
    assert [x["measured_sparsity"] for x in r["rows"]][:2] == [0.0, pytest.approx(0.5, abs=0.1)]  # N(0, 1) inputs, |x| quantile
    assert plot_gemv({**r, "machine": {}}, tmp_path) == ["gemv.png"] and (tmp_path / "gemv.png").stat().st_size > 0




@needs_cc
def test_decode_follows_weights_replaced_after_prepare():
    """`model.to(...)` replaces parameter data without telling the module; the next step must use the new weights."""
    model, _ = calibrated("llama")
    prepare_decode_(model)
    step = random_ids(1, 1, seed=2)
    with torch.no_grad():
        model(input_ids=step)  # steps prepared on the old weights
        for p in model.parameters():
            p.data = p.data * 2  # what Module._apply does (same layout, new storage)
        got = model(input_ids=step).logits
        with masked_dense(model):
            want = model(input_ids=step).logits
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@needs_cc
def test_decode_backend_reports_what_each_layer_uses():
    from spon.serving.decode import decode_backends

    model, _ = calibrated("llama")
    assert decode_backend(model) == "none"
    prepare_decode_(model)
    assert decode_backend(model) == "cpu"
    for rule, kw in (("wina", {}), ("rsparse", {}), ("magnitude", {"selection": "topk"})):
        other, _ = calibrated("llama", rule=rule, **kw)
        prepare_decode_(other)
        assert decode_backend(other) == "masked-matmul", rule  # these rules never take the kernel
    with masked_dense(model):
        assert set(decode_backends(model).values()) == {"masked-matmul"}


@needs_cc
def test_bench_gemv_never_reads_a_cache_hot_copy(monkeypatch):
    """Consecutive timed calls read different weight copies (the same copy twice in a row is read from cache)."""
    import spon.bench.gemv as bg

    seen = []
    real_plan, real_linear, real_ref = bg.GemvPlan, bg.F.linear, bg.reference_gemv

    class Plan(real_plan):
        def __call__(self, x):
            seen.append(self.wt.data_ptr())
            return super().__call__(x)

    def linear(x, w, b=None):
        seen.append(w.data_ptr())
        return real_linear(x, w, b)

    def ref(x, wt, b, tau):
        seen.append(wt.data_ptr())
        return real_ref(x, wt, b, tau)

    monkeypatch.setattr(bg, "GemvPlan", Plan)
    monkeypatch.setattr(bg, "reference_gemv", ref)
    monkeypatch.setattr(bg, "F", type("F", (), {"linear": staticmethod(linear)}))
    bg.bench_gemv([(64, 256)], [0.5], ["float32"], repeats=4, progress=False, pool_bytes=2**20)
    assert len(seen) == 4 * 6 and all(a != b for a, b in zip(seen, seen[1:]))


def test_greedy_decode_gives_every_token_past_an_end_of_text_token():
    """The bench's loop decodes exactly n tokens even where the model would stop, and leaves its config as it was."""
    from spon.bench.decode import greedy_decode

    model, ids = make_model("llama"), random_ids(1, 6, seed=3)
    tokens, _, _ = greedy_decode(model, ids, 12)
    model.generation_config.eos_token_id = tokens[3]  # greedy_generate's default would stop at the fourth token
    again, _, _ = greedy_decode(model, ids, 12)
    assert len(tokens) == 12 and again == tokens and model.generation_config.eos_token_id == tokens[3]


@needs_cc
def test_head_takes_the_gemv_that_times_faster_here(monkeypatch):
    import types

    import spon.serving.decode_head as dh

    linear = torch.nn.Linear(64, 300)
    assert dh.DecodeHead(linear, "torch").path == "torch" and dh.DecodeHead(linear, "kernel").path == "kernel"
    x = torch.randn(64)
    real = dh.candidates(dh.DecodeHead(linear, "kernel"))
    assert set(real) == {"kernel", "torch"}
    torch.testing.assert_close(real["kernel"](x), real["torch"](x), atol=1e-5, rtol=1e-5)  # the same logits either way
    clock = [0.0]  # a fake clock each path advances by its own cost (real timings on a busy machine would be noise)
    monkeypatch.setattr(dh, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def costing(kernel_s, torch_s):
        def tick(s):
            def fn(v):
                clock[0] += s
            return fn
        return lambda head: {"kernel": tick(kernel_s), "torch": tick(torch_s)}

    monkeypatch.setattr(dh, "candidates", costing(0.001, 0.005))
    assert dh.DecodeHead(linear).path == "kernel"
    monkeypatch.setattr(dh, "candidates", costing(0.005, 0.001))
    assert dh.DecodeHead(linear).path == "torch"
    monkeypatch.undo()
    half = torch.nn.Linear(64, 300).to(torch.float16)  # a dtype the kernel does not read: torch's, untimed
    assert dh.DecodeHead(half).path == "torch"
    with pytest.raises(ValueError, match="head path"):
        dh.DecodeHead(linear, "fast")


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("widths", [(48, 16, 34), (48, 16, 33)], ids=["even", "odd"])
def test_siblings_in_one_buffer_are_read_as_one_row_and_each_keeps_its_threshold(dtype, widths):
    """Layers whose weights lie side by side in one [in, ld] buffer (and accumulators back to back) take the fused loop:
    one row per input any of them keeps, each layer's coefficient zero where its own threshold drops the input; each
    still gets its own W S(x) + b (float32 rounding apart; odd widths: the unpaired bf16 loop)."""
    import ctypes

    k = cpu.cpu_kernel()
    g = torch.Generator().manual_seed(4)
    n_in, T, n = 200, 2, len(widths)
    x = torch.randn(n_in, generator=g).to(dtype)
    rows = torch.randn(n_in, sum(widths), generator=g).to(dtype)  # the siblings' fused rows
    starts = [sum(widths[:s]) for s in range(n)]
    wt = [rows[:, a:a + w] for a, w in zip(starts, widths)]  # each layer's weight: a strided view of its columns
    taus = [float(x.float().abs().quantile(q).to(dtype)) for q in (0.3, 0.6, 0.45)]  # as the operator rounds them
    bias = [torch.randn(w, generator=g) for w in widths]
    acc = torch.zeros(T * sum(widths))
    idx, val = [torch.zeros(n_in, dtype=torch.int64) for _ in widths], [torch.zeros(n_in) for _ in widths]
    ys = [torch.empty(w, dtype=dtype) for w in widths]

    def plans(weights, accs):
        return [cpu._Plan(w.data_ptr(), b.data_ptr(), a, i.data_ptr(), v.data_ptr(), n_in, w.shape[1], t, T,
                          int(dtype == torch.bfloat16), int(dtype == torch.bfloat16), 0, cpu.row_stride(w))
                for w, b, a, i, v, t in zip(weights, bias, accs, idx, val, taus)]

    def call(ps):
        arr = (ctypes.c_void_p * n)(*[ctypes.addressof(p) for p in ps])
        k.lib.spon_gemv_multi(arr, n, ctypes.c_void_p(x.data_ptr()), (ctypes.c_void_p * n)(*[y.data_ptr() for y in ys]))
        return arr

    back_to_back = [acc.data_ptr() + 4 * T * a for a in starts]
    fused = plans(wt, back_to_back)
    assert k.lib.spon_gemv_fusable(call(fused), n) == 1
    for y, w, b, t in zip(ys, wt, bias, taus):
        torch.testing.assert_close(y, expected(x, w, b.to(dtype), t), **TOL[dtype])
    got = [y.clone() for y in ys]
    apart = [w.contiguous() for w in wt]  # the same layers as separate matrices: one loop each
    assert k.lib.spon_gemv_fusable(call(plans(apart, back_to_back)), n) == 0
    for a, b in zip(got, ys):
        torch.testing.assert_close(a, b, atol=1e-5 if dtype == torch.float32 else 1e-2, rtol=1e-5 if dtype == torch.float32 else 1e-2)
    loose = plans(wt, [torch.zeros(T * w).data_ptr() for w in widths])
    assert k.lib.spon_gemv_fusable((ctypes.c_void_p * n)(*[ctypes.addressof(p) for p in loose]), n) == 0  # accumulators apart


@needs_cc
def test_byte_bound_counts_the_dense_head_in_full():
    """Tiny llama: 2 layers of q 32x32, k/v 32x16, o 32x32, gate/up/down 32x64 (9,216 weights each) and a 96x32 head."""
    from spon.bench.decode import byte_bound

    model, _ = calibrated("llama", 0.5)
    assert byte_bound(model, 0.0) == 1.0
    assert byte_bound(model, 0.5) == pytest.approx((3072 + 18432) / (3072 + 18432 / 2))
    prepare_decode_(model)  # the head becomes a DecodeHead: still counted
    assert byte_bound(model, 1.0) == pytest.approx((3072 + 18432) / 3072)


def test_round_ratios_pair_each_round_with_the_reference_of_that_round():
    """A row 2x the reference in every round has ratio 2 whatever the drift between rounds; medians of the rates
    would say otherwise when the drift is uneven."""
    from spon.bench.decode import round_ratios

    seconds = {"ref": [1.0, 3.0, 2.0], "fast": [0.5, 1.5, 1.0], "mixed": [1.0, 1.0, 4.0]}
    r = round_ratios(seconds, "ref")
    assert r["ref"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert r["fast"] == {"median": 2.0, "min": 2.0, "max": 2.0}
    assert r["mixed"] == {"median": 1.0, "min": 0.5, "max": 3.0}


@needs_cc
def test_a_head_sparsified_on_request_keeps_its_tie_folds_exactly_and_decodes_like_masked_dense(arch):
    """`--sparsify-head` puts the output head among the sparse layers: it reads the embeddings' weight (tied
    models), takes a SPON vector folded into a bias of vocabulary size, and serves single tokens through the sparse
    GEMV, not the dense `DecodeHead`."""
    from spon.bench.decode import byte_bound
    from spon.sparsity.sparse_linear import SparseLinear

    model = make_model(arch)
    head_weight = model.get_output_embeddings().weight
    tied = model.get_input_embeddings().weight is head_weight
    cfg = spon.SparsityConfig(sparsity=0.5, sparsify_head=True)
    mods = spon.sparsify_(model, cfg)
    assert "lm_head" in mods and isinstance(model.get_output_embeddings(), SparseLinear)
    assert model.get_output_embeddings().weight is head_weight
    assert (model.get_input_embeddings().weight is head_weight) == tied
    spon.calibrate_(model, [random_ids(2, 32, seed=s) for s in range(2)], cfg, progress=False)
    g = torch.Generator().manual_seed(3)
    for m in spon.sparse_modules(model).values():
        m.alpha.copy_(torch.randn(m.in_features, generator=g) * 0.05)
    prompt = random_ids(1, 12, seed=4)
    with torch.no_grad():
        before = model(input_ids=prompt).logits
        spon.fold_(model)
        torch.testing.assert_close(model(input_ids=prompt).logits, before, **TOL[torch.float32])
    assert model.lm_head.folded_bias.shape == (model.config.vocab_size,)
    prepare_decode_(model)
    assert isinstance(model.get_output_embeddings(), SparseLinear)  # not swapped for the dense DecodeHead
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied  # no second copy
    torch.testing.assert_close(model.get_output_embeddings().weight, head_weight, rtol=0, atol=0)
    assert byte_bound(model, 0.5) == pytest.approx(2.0)  # every linear sparse: half the bytes at half the columns
    with torch.no_grad():
        step = prompt[:, :1]
        got = model(input_ids=step).logits  # one token: the head through the kernel too
        with masked_dense(model):
            ref = model(input_ids=step).logits
    torch.testing.assert_close(got, ref, **TOL[torch.float32])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=prompt).logits, before, **TOL[torch.float32])  # prefill: lookups too
    spon.unsparsify_(model)
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied
    torch.testing.assert_close(model.get_output_embeddings().weight, head_weight, rtol=0, atol=0)

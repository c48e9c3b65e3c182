"""The compiled decode path: torch.compile captures a prepared sparse model's steps whole (fullgraph), the sparse
GEMV as one custom operator, with a static KV cache; it gives what the eager path gives, on every tiny architecture."""

import contextlib

import pytest
import torch

import spon
from conftest import calibrated, make_model, needs_cc, random_ids, with_random_alphas
from spon.serving.decode import attention_of, compile_decode_, masked_dense, prepare_decode_, set_attention, warm_guards
from spon.serving.greedy import greedy_generate
from spon.serving.kernels import op  # noqa: F401  (registers the operators)

pytestmark = [needs_cc, pytest.mark.slow]


def _generate(model, ids, n=8):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation="static",
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits)


def test_custom_op_matches_the_reference_and_has_a_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    g = torch.Generator().manual_seed(0)
    x, wt, bias = torch.randn(1, 1, 40, generator=g), torch.randn(40, 24, generator=g), torch.randn(24, generator=g)
    tau = torch.tensor(0.5)
    want = (x * (x.abs() > 0.5)) @ wt + bias
    torch.testing.assert_close(torch.ops.spon.sparse_gemv(x, wt, bias, tau), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.ops.spon.sparse_gemv(x, wt, None, tau), want - bias, atol=1e-5, rtol=1e-5)
    torch.library.opcheck(torch.ops.spon.sparse_gemv.default, (x, wt, bias, tau))
    for other in (torch.tensor([0.5]), torch.tensor(0.5, dtype=torch.bfloat16), torch.tensor(0.5, dtype=torch.float64)):
        torch.testing.assert_close(torch.ops.spon.sparse_gemv(x, wt, bias, other), want, atol=1e-5, rtol=1e-5)  # the
        # threshold as stored by a [1]-shaped or converted buffer: read in place (float32, bf16) or through item()
    assert torch.equal(torch.ops.spon.sparse_gemv(x, wt, bias, torch.tensor(10.0)), bias.expand(1, 1, 24))  # all dropped
    for dtype in (torch.bfloat16, torch.float16):  # 16-bit x: tau rounded to x's dtype (fp16: the plain-torch path)
        x16, wt16 = x.to(dtype), wt.to(dtype)
        want16 = ((x16.float() * (x16.abs() > torch.tensor(0.5).to(dtype))) @ wt16.float() + bias).to(dtype)
        torch.testing.assert_close(torch.ops.spon.sparse_gemv(x16, wt16, bias, tau), want16, atol=2e-2, rtol=2e-2)
        b16 = bias.to(dtype)  # a 16-bit model's own bias: read as it is (bf16) or converted (fp16), same sums as float32
        assert torch.equal(torch.ops.spon.sparse_gemv(x16, wt16, b16, tau), torch.ops.spon.sparse_gemv(x16, wt16, b16.float(), tau))
        head = wt16.t().contiguous()
        assert dtype == torch.float16 or torch.equal(torch.ops.spon.dense_gemv(x16, head, b16), torch.ops.spon.dense_gemv(x16, head, b16.float()))
    with FakeTensorMode() as mode:
        fake = torch.ops.spon.sparse_gemv(mode.from_tensor(x), mode.from_tensor(wt), mode.from_tensor(bias), mode.from_tensor(tau))
    assert fake.shape == (1, 1, 24) and fake.dtype == x.dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multi_operator_gives_each_layer_its_own_call(dtype):
    """One call for layers that read the same x, each with its own threshold and bias (or none), odd and even widths,
    gives bit for bit what each layer's own call gives (the kernel sums each layer's rows in the same order)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 64, generator=g).to(dtype)
    wt = [torch.randn(64, n, generator=g).to(dtype) for n in (48, 16, 33)]
    bias = [torch.randn(48, generator=g), None, torch.randn(33, generator=g).to(dtype)]
    tau = [torch.tensor(0.3), torch.tensor(0.9), torch.tensor(0.0)]
    got = torch.ops.spon.sparse_gemv_multi(x, wt, bias, tau)
    assert [y.shape for y in got] == [(1, 1, 48), (1, 1, 16), (1, 1, 33)] and all(y.dtype == dtype for y in got)
    for y, w, b, t in zip(got, wt, bias, tau):
        assert torch.equal(y, torch.ops.spon.sparse_gemv(x, w, b, t))
    from spon.serving.kernels.op import sparse_gemv_multi_op  # the Python implementation (CUDA, or no C++ build)

    for y, want in zip(got, sparse_gemv_multi_op(x, wt, bias, tau)):
        torch.testing.assert_close(y, want, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2)
    strided = [w.t().contiguous().t() for w in wt]  # not input-major contiguous: the group goes one call at a time
    for y, w, b, t in zip(torch.ops.spon.sparse_gemv_multi(x, strided, bias, tau), wt, bias, tau):
        torch.testing.assert_close(y, torch.ops.spon.sparse_gemv(x, w, b, t), atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2)
    torch.library.opcheck(torch.ops.spon.sparse_gemv_multi.default, (x, wt, bias, tau))


def test_graph_pass_groups_calls_that_share_an_input_and_only_those():
    from spon.serving.kernels.grouping import group_sparse_gemvs

    g = torch.Generator().manual_seed(2)
    wq, wk, wo = (torch.randn(16, n, generator=g) for n in (16, 8, 16))
    tau = torch.tensor(0.5)

    def step(x):
        q = torch.ops.spon.sparse_gemv(x, wq, None, tau)
        k = torch.ops.spon.sparse_gemv(x, wk.t().contiguous().t().contiguous(), None, tau)  # its weight made after q's call
        h = torch.relu(q)
        return torch.ops.spon.sparse_gemv(h, wo, None, tau) + k.sum()  # another input: stays alone

    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(1, 16, generator=g)
    gm = make_fx(step)(x)  # operator overloads, as in the graphs inductor passes
    want = step(x)
    assert group_sparse_gemvs(gm.graph) == 1
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.spon.sparse_gemv_multi.default) == 1
    assert targets.count(torch.ops.spon.sparse_gemv.default) == 1
    assert torch.equal(gm(x), want)
    assert group_sparse_gemvs(gm.graph) == 0  # nothing left to group


def test_python_operator_implementation_serves_the_cpu_where_the_cpp_one_is_off():
    """SPON_PYTHON_OP=1 (or a failed C++ build) leaves the CPU to the Python implementations: same results."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = (
        "import torch\n"
        "from spon.serving.kernels import op\n"
        "assert not op.native_cpu\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for dt in (torch.float32, torch.bfloat16):\n"
        "    x, wt, b = (torch.randn(s, generator=g).to(dt) for s in ((1, 1, 40), (40, 24), (24,)))\n"
        "    keep = x.abs() > torch.tensor(0.5).to(dt)\n"
        "    want = ((x.float() * keep) @ wt.float() + b.float()).to(dt)\n"
        "    torch.testing.assert_close(torch.ops.spon.sparse_gemv(x, wt, b, torch.tensor(0.5)), want, atol=2e-2, rtol=1e-2)\n"
        "    torch.testing.assert_close(torch.ops.spon.dense_gemv(x, wt.t().contiguous(), b), (x.float() @ wt.float() + b.float()).to(dt), atol=2e-2, rtol=1e-2)\n"
        "assert len(op._plans) == 4\n"
        "ys = torch.ops.spon.sparse_gemv_multi(x, [wt, wt[:, :8].contiguous()], [b, None], [torch.tensor(0.5)] * 2)\n"
        "torch.testing.assert_close(ys[0], want, atol=2e-2, rtol=1e-2)\n"
        "torch.testing.assert_close(ys[1], (want.float() - b.float())[..., :8].to(dt), atol=3e-2, rtol=2e-2)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "SPON_PYTHON_OP": "1",
           "PYTHONPATH": os.pathsep.join([str(here.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def _layers_per_input(model, ids) -> list[int]:
    """How many sparse layers read each distinct input tensor in one eager forward (q/k/v read one, gate/up another):
    found by identity of the tensors the layers receive, apart from the graph the pass rewrites."""
    inputs: list[torch.Tensor] = []  # held, so no id is reused within the forward
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for m in spon.sparse_modules(model).values()]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    counts: dict[int, int] = {}
    for t in inputs:
        counts[id(t)] = counts.get(id(t), 0) + 1
    return list(counts.values())


def test_prepare_decode_lays_siblings_side_by_side_and_each_layer_reads_the_same(arch):
    """The layers that read one input (`siblings`) share one buffer, each input's weights for all of them one row, in
    call order; each layer's weight is a view of its columns, so dense (prefill) and kernel (single-token) paths give
    what the unfused model gives."""
    model, _ = calibrated(arch)
    with_random_alphas(model)
    plain, _ = calibrated(arch)
    with_random_alphas(plain)
    ids = random_ids(1, 6, seed=3)
    from spon.serving.decode import siblings

    groups = siblings(model)
    assert sorted(len(g) for g in groups) == sorted(_layers_per_input(model, ids))
    prepare_decode_(model, huge_pages=False)
    prepare_decode_(plain, huge_pages=False, fuse_siblings=False)
    for group in groups:
        wts = [m.matrix.t() for m in group]
        width = sum(w.shape[1] for w in wts)
        assert all(w.stride() == (width, 1) for w in wts)  # one row of all their columns per input
        assert all(b.data_ptr() == a.data_ptr() + a.shape[1] * a.element_size() for a, b in zip(wts, wts[1:]))
    for m in spon.sparse_modules(plain).values():
        assert m.matrix.t().is_contiguous()
    with torch.profiler.profile() as prof:
        tokens, logits = _generate(model, ids)
    calls = {e.key: e.count for e in prof.key_averages()}
    groups_of_more = sum(len(g) > 1 for g in groups)
    assert calls.get("spon::sparse_gemv_multi", 0) == 7 * groups_of_more  # eager too: one call per group and step
    want_tokens, want_logits = _generate(plain, ids)
    assert torch.equal(tokens, want_tokens)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    with spon.without_spon(model), spon.without_spon(plain):  # a switch reaches every member of a group
        torch.testing.assert_close(_generate(model, ids)[1], _generate(plain, ids)[1], atol=1e-5, rtol=1e-5)
    with masked_dense(model):
        torch.testing.assert_close(_generate(model, ids)[1], want_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("group", [True, False], ids=["grouped", "one-call-per-layer"])
def test_compiled_steps_equal_eager_steps(arch, group):
    from spon.serving.kernels.grouping import SUPPORTED

    if group and not SUPPORTED:
        pytest.skip(f"torch {torch.__version__}'s inductor takes no custom graph pass as a compile option (2.6 does)")
    torch._dynamo.reset()
    model, _ = calibrated(arch)
    with_random_alphas(model)
    prepare_decode_(model, head="kernel")  # the count below needs the head on the operator
    ids = random_ids(1, 6, seed=3)
    eager_tokens, eager_logits = _generate(model, ids)
    per_input = _layers_per_input(model, ids)
    assert sum(per_input) == len(spon.sparse_modules(model))
    compile_decode_(model, group_projections=group)
    _generate(model, ids)  # compiles
    with torch.profiler.profile() as prof:
        tokens, logits = _generate(model, ids)
    calls = {e.key: e.count for e in prof.key_averages()}
    steps = 7  # the 8 tokens' single-token steps (the prompt's step is not one)
    if group:  # one call per group of layers that share an input, one for each layer alone
        assert calls.get("spon::sparse_gemv_multi", 0) == steps * sum(n > 1 for n in per_input)
        assert calls.get("spon::sparse_gemv", 0) == steps * sum(n == 1 for n in per_input)
        # q/k/v; GPT-2 computes them in one Conv1D already; Falcon too, and its parallel attention feeds the same
        # normed input to query_key_value and dense_h_to_4h: a group of two
        assert max(per_input) == {"gpt2": 1, "falcon": 2}.get(arch, 3)
    else:  # every sparse linear, every step
        assert calls.get("spon::sparse_gemv") == steps * len(spon.sparse_modules(model))
        assert "spon::sparse_gemv_multi" not in calls
    assert calls.get("spon::dense_gemv") == steps + 1  # the output head through the dense one (the prompt's last token too)
    assert torch.equal(tokens, eager_tokens)
    if group:  # greedy_generate (the bench's and `spon generate`'s loop): its own static cache, the same operators
        greedy_generate(model, ids, 8, eos_token_id=None)  # compiles for its own arguments
        with torch.profiler.profile() as prof:
            assert greedy_generate(model, ids, 8, eos_token_id=None) == tokens[0, ids.shape[1]:].tolist()
        calls = {e.key: e.count for e in prof.key_averages()}
        assert calls.get("spon::sparse_gemv_multi", 0) == steps * sum(n > 1 for n in per_input)
    torch.testing.assert_close(logits, eager_logits, atol=1e-4, rtol=1e-4)
    with masked_dense(model):  # the reference: F.linear on the masked input (recompiles without the operator)
        _, ref = _generate(model, ids)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_compiled_path_at_zero_sparsity_gives_the_dense_models_tokens():
    torch._dynamo.reset()
    model = make_model("llama")
    spon.sparsify_(model, spon.SparsityConfig(sparsity=0.0))  # thresholds -1: nothing dropped
    prepare_decode_(model)
    compile_decode_(model)
    ids = random_ids(1, 6, seed=5)
    dense_tokens, dense_logits = _generate(make_model("llama"), ids)
    tokens, logits = _generate(model, ids)
    assert torch.equal(tokens, dense_tokens)
    torch.testing.assert_close(logits, dense_logits, atol=1e-4, rtol=1e-4)


def test_compiled_decode_takes_eager_attention_on_cpu_unless_told_otherwise():
    """SDPA's kernel call costs more than a single token's attention on CPU; "auto" switches to the plain-op attention
    (test_compiled_steps_equal_eager_steps checks it against the uncompiled SDPA model), a name or None is obeyed."""
    for attention, want in [("auto", "eager"), (None, "sdpa"), ("sdpa", "sdpa"), ("eager", "eager")]:
        model = make_model("llama")
        assert attention_of(model) == "sdpa"
        compile_decode_(model, attention=attention)
        assert attention_of(model) == want, attention
    plain = torch.nn.Linear(2, 2)
    set_attention(plain, "eager")  # no config: nothing to switch, and no error
    assert attention_of(plain) is None


def test_warm_guards_keep_each_warmed_switch_on_its_own_graph():
    torch._dynamo.reset()
    model, _ = calibrated("llama")
    with_random_alphas(model)
    prepare_decode_(model)
    compile_decode_(model)
    ids = random_ids(1, 6, seed=3)
    switches = {"sparse+SPON": contextlib.nullcontext, "sparse": lambda: spon.without_spon(model),
                "masked": lambda: masked_dense(model)}
    ref = {}
    for name, ctx in switches.items():  # the warm-up: each switch compiles its graphs with every guard checked
        with ctx():
            ref[name] = _generate(model, ids)[1]
    assert not torch.allclose(ref["sparse+SPON"], ref["sparse"], atol=1e-3)  # a graph taken for another would show
    assert not torch.equal(ref["sparse+SPON"], ref["masked"])
    with warm_guards():
        for name, ctx in reversed(switches.items()):
            with ctx():
                assert torch.equal(_generate(model, ids)[1], ref[name]), name


def test_a_prepared_model_saves_each_weight_as_its_own_matrix(tmp_path):
    """Weights that are views into shared rows (siblings side by side) come out of state_dict as matrices of their own,
    with the values of the unprepared model, and Hugging Face's save_pretrained writes them."""
    model, _ = calibrated("llama")
    want = {k: v.clone() for k, v in model.state_dict().items()}
    prepare_decode_(model)
    got = model.state_dict()
    mods = spon.sparse_modules(model)
    assert any(m.weight.untyped_storage().nbytes() > m.weight.nbytes for m in mods.values())  # q/k/v, gate/up share rows
    for name, m in mods.items():
        shared = m.weight.untyped_storage().nbytes() > m.weight.nbytes
        assert torch.equal(got[name + ".weight"], want[name + ".weight"])
        assert not shared or got[name + ".weight"].untyped_storage().nbytes() == m.weight.nbytes  # a copy of its own
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.parametrize("arch", ["gemma3", "llama"])  # tied and untied head
def test_compiled_steps_with_the_head_sparsified_equal_eager_steps(arch):
    torch._dynamo.reset()
    model, _ = calibrated(arch, sparsify_head=True)
    with_random_alphas(model)
    prepare_decode_(model)
    ids = random_ids(1, 6, seed=3)
    eager_tokens, eager_logits = _generate(model, ids)
    compile_decode_(model)
    _generate(model, ids)  # compiles
    with torch.profiler.profile() as prof:
        tokens, logits = _generate(model, ids)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert "spon::dense_gemv" not in calls and calls.get("spon::sparse_gemv", 0) >= 7  # the head: one sparse call a step
    assert torch.equal(tokens, eager_tokens)
    torch.testing.assert_close(logits, eager_logits, atol=1e-4, rtol=1e-4)

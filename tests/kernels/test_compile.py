"""The compiled decode path: torch.compile captures a prepared sparse model's steps whole (fullgraph), the sparse
GEMV as one custom operator, with a static KV cache; it gives what the eager path gives, on every tiny architecture."""

import pytest
import torch

import spon
from conftest import calibrated, make_model, needs_cc, random_ids, with_random_alphas
from spon.decode import compile_decode_, masked_dense, prepare_decode_
from spon.kernels import op  # noqa: F401  (registers the operators)

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
    with FakeTensorMode() as mode:
        fake = torch.ops.spon.sparse_gemv(mode.from_tensor(x), mode.from_tensor(wt), mode.from_tensor(bias), mode.from_tensor(tau))
    assert fake.shape == (1, 1, 24) and fake.dtype == x.dtype


def test_python_operator_implementation_serves_the_cpu_where_the_cpp_one_is_off():
    """SPON_PYTHON_OP=1 (or a failed C++ build) leaves the CPU to the Python implementations: same results."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = (
        "import torch\n"
        "from spon.kernels import op\n"
        "assert not op.native_cpu\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for dt in (torch.float32, torch.bfloat16):\n"
        "    x, wt, b = (torch.randn(s, generator=g).to(dt) for s in ((1, 1, 40), (40, 24), (24,)))\n"
        "    keep = x.abs() > torch.tensor(0.5).to(dt)\n"
        "    want = ((x.float() * keep) @ wt.float() + b.float()).to(dt)\n"
        "    torch.testing.assert_close(torch.ops.spon.sparse_gemv(x, wt, b, torch.tensor(0.5)), want, atol=2e-2, rtol=1e-2)\n"
        "    torch.testing.assert_close(torch.ops.spon.dense_gemv(x, wt.t().contiguous(), b), (x.float() @ wt.float() + b.float()).to(dt), atol=2e-2, rtol=1e-2)\n"
        "assert len(op._plans) == 4\n"
        "print('ok')\n"
    )
    env = {**os.environ, "SPON_PYTHON_OP": "1",
           "PYTHONPATH": os.pathsep.join([str(here.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_compiled_steps_equal_eager_steps(arch):
    torch._dynamo.reset()
    model, _ = calibrated(arch)
    with_random_alphas(model)
    prepare_decode_(model)
    ids = random_ids(1, 6, seed=3)
    eager_tokens, eager_logits = _generate(model, ids)
    compile_decode_(model)
    _generate(model, ids)  # compiles
    with torch.profiler.profile() as prof:
        tokens, logits = _generate(model, ids)
    calls = {e.key: e.count for e in prof.key_averages()}
    steps = 7  # the 8 tokens' single-token steps (the prompt's step is not one)
    assert calls.get("spon::sparse_gemv") == steps * len(spon.sparse_modules(model))  # every sparse linear, every step
    assert calls.get("spon::dense_gemv") == steps + 1  # the output head through the dense one (the prompt's last token too)
    assert torch.equal(tokens, eager_tokens)
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

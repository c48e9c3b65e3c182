"""Quantized weights: GGUF's own values exactly, the quantized sparse GEMV against its dequantized reference, and a
model served from quantized bytes decoding as its dequantized sparse model does."""

import numpy as np
import pytest
import torch

import gguf
import gguf.quants
import spon
from conftest import COMMON, needs_cc, random_ids, with_random_alphas
from spon.errors import SponError
from spon.serving.greedy import greedy_generate
from spon.serving.kernels import quant_cpu
from spon.serving.kernels.quant_cpu import QuantGemv, reference_qgemv
from spon.serving.quantized import QUANTIZABLE, TYPES, from_gguf, quantize
from spon.serving.quantized_model import (
    QuantEmbedding, QuantLinear, gguf_weights, quantize_weights_, quantized_bytes, serve_quantized_,
)
from spon.training.fold import fold_

# (out, in): every row format's wide loop and its scalar fallbacks (out 7: one byte a code; 40: U4 without the AVX2
# loop; 24: U5 without it; 128: U5 with it)
SHAPES = [(7, 32), (40, 64), (24, 96), (128, 96), (512, 256)]


def random_blocks(name: str, out: int, n_in: int, seed: int = 0) -> np.ndarray:
    """Raw GGUF blocks of a K type with random codes and sane float16 scales (gguf quantizes only the simple types)."""
    qk, size = TYPES[name]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(out, n_in // qk, size), dtype=np.uint8)
    scales = rng.uniform(1e-3, 2e-2, size=(out, n_in // qk, 2)).astype(np.float16).view(np.uint8)
    if name == "Q4_K":
        raw[..., 0:4] = scales.reshape(out, n_in // qk, 4)
    else:  # Q6_K: d last
        raw[..., 208:210] = scales[..., :2]
    return raw.reshape(out, -1)


def gguf_reference(name: str, raw: np.ndarray, shape) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]).reshape(shape))


@pytest.mark.parametrize("name", QUANTIZABLE)
@pytest.mark.parametrize("shape", SHAPES)
def test_simple_types_keep_ggufs_values_exactly(name, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[name])
    qw = quantize(w, name)
    assert torch.equal(qw.dequantize(), gguf_reference(name, raw, shape))  # bit for bit
    assert torch.equal(qw.rows(torch.tensor([0, shape[0] - 1, 3])), qw.dequantize()[[0, shape[0] - 1, 3]])


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("out", [8, 48, 64])
def test_k_types_keep_ggufs_values_exactly(name, out):
    raw = random_blocks(name, out, 512)
    qw = from_gguf(name, raw, (out, 512))
    assert qw.block == (16 if name == "Q6_K" else 32)
    assert torch.equal(qw.dequantize(), gguf_reference(name, raw, (out, 512)))


def kernel_cases():
    g = torch.Generator().manual_seed(0)
    for name in QUANTIZABLE:
        for out, n_in in SHAPES:
            yield name, quantize(torch.randn(out, n_in, generator=g), name), n_in
    for name in ("Q4_K", "Q6_K"):
        yield name, from_gguf(name, random_blocks(name, 64, 512), (64, 512)), 512


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_matches_its_dequantized_reference(threads):
    g = torch.Generator().manual_seed(2)
    for name, qw, n_in in kernel_cases():
        x = torch.randn(n_in, generator=g)
        bias = torch.randn(qw.out_features, generator=g)
        for tau, b in [(-1.0, bias), (float(x.abs().median()), bias), (0.3, None), (float(x.abs().max()) + 1, bias)]:
            gemv = QuantGemv(qw, b, tau, threads=threads)
            y, kept = gemv.run(x)
            ref = reference_qgemv(x, qw, b, gemv.tau)
            assert kept == int((x.abs() > gemv.tau).sum())
            torch.testing.assert_close(y, ref, atol=1e-4 * float(ref.abs().max() + 1), rtol=1e-5, msg=f"{name} {qw.kind}")
        y, kept = QuantGemv(qw, bias, float(x.abs().max()) + 1, threads=threads).run(x)
        assert kept == 0 and torch.equal(y, bias)  # everything dropped: the bias, exactly


@needs_cc
def test_operator_matches_the_reference_in_any_dtype():
    from spon.serving.kernels import quant_op  # noqa: F401

    qw = quantize(torch.randn(64, 96, generator=torch.Generator().manual_seed(3)), "Q4_1")
    x, b = torch.randn(1, 1, 96), torch.randn(64)
    y = torch.ops.spon.quant_gemv(x, qw.q, qw.hb, qw.scale, qw.minimum, b, 0.5, qw.block, 1)
    assert y.shape == (1, 1, 64)
    torch.testing.assert_close(y.reshape(-1), reference_qgemv(x, qw, b, 0.5), atol=1e-4, rtol=1e-5)
    yb = torch.ops.spon.quant_gemv(x.bfloat16(), qw.q, qw.hb, qw.scale, qw.minimum, b, 0.5, qw.block, 1)
    assert yb.dtype == torch.bfloat16


def test_without_a_kernel_the_reference_serves(monkeypatch):
    monkeypatch.setattr(quant_cpu, "quant_kernel", lambda: None)
    qw = quantize(torch.randn(16, 64), "Q8_0")
    x = torch.randn(64)
    assert torch.equal(QuantGemv(qw, None, 0.2).run(x)[0], reference_qgemv(x, qw, None, QuantGemv(qw, None, 0.2).tau))


def test_k_types_and_odd_widths_cannot_be_made_from_floats():
    with pytest.raises(SponError, match="K types come only from a GGUF file"):
        quantize(torch.randn(8, 256), "q4_k")
    with pytest.raises(SponError, match="blocks are 32 inputs"):
        quantize(torch.randn(8, 40), "q8_0")


def tiny_llama(tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = {**COMMON, "hidden_size": 64, "intermediate_size": 128}
    return LlamaForCausalLM(LlamaConfig(**cfg, tie_word_embeddings=tied)).eval()


def sparse_spon(model, sparsity=0.5):
    cfg = spon.SparsityConfig(sparsity=sparsity)
    spon.sparsify_(model, cfg)
    spon.calibrate_(model, [random_ids(2, 32, seed=s) for s in range(4)], cfg, progress=False)
    if sparsity:
        with_random_alphas(model)
    fold_(model)
    return model


@needs_cc
@pytest.mark.parametrize("qtype", [q.lower() for q in QUANTIZABLE])
def test_served_model_decodes_as_its_dequantized_sparse_model(qtype):
    model = tiny_llama()
    info = quantize_weights_(model, qtype)
    assert info["layers"] == 2 * 7 + 1  # every decoder linear and the head
    model = sparse_spon(model)
    ids = random_ids(1, 8)
    with torch.no_grad():
        want_logits = model(ids).logits
    want = greedy_generate(model, ids, 10, eos_token_id=None)
    res = serve_quantized_(model, qtype)
    assert res["layers"] == res["of"] == 15 and res["types"] == [qtype.upper()]
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"QuantLinear", "QuantEmbedding"} <= kinds and "SparseLinear" not in kinds
    assert quantized_bytes(model) < sum(p.numel() for p in model.parameters()) * 4 + 10**6
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want_logits, atol=1e-5, rtol=1e-5)  # prefill: the same masked matmul
    assert greedy_generate(model, ids, 10, eos_token_id=None) == want  # single tokens: the kernel


@needs_cc
def test_an_embedding_of_its_own_is_served_quantized_too():
    model = tiny_llama(tied=False)
    assert quantize_weights_(model, "q8_0")["layers"] == 2 * 7 + 2  # the linears, the head and the embedding
    model = sparse_spon(model)
    ids = random_ids(1, 6)
    want = greedy_generate(model, ids, 8, eos_token_id=None)
    serve_quantized_(model, "q8_0")
    assert isinstance(model.get_input_embeddings(), QuantEmbedding) and isinstance(model.get_output_embeddings(), QuantLinear)
    assert model.get_input_embeddings().qweight is not model.get_output_embeddings().qweight
    assert greedy_generate(model, ids, 8, eos_token_id=None) == want


@needs_cc
def test_at_zero_sparsity_the_served_model_is_the_dense_quantized_model():
    model = tiny_llama()
    quantize_weights_(model, "q4_0")
    ids = random_ids(1, 6)
    dense = greedy_generate(model, ids, 12, eos_token_id=None)
    sparse_spon(model, sparsity=0.0)
    serve_quantized_(model, "q4_0")
    assert greedy_generate(model, ids, 12, eos_token_id=None) == dense


def test_serving_refuses_weights_that_are_not_the_types_values():
    model = sparse_spon(tiny_llama())
    with pytest.raises(SponError, match="not q8_0 values"):
        serve_quantized_(model, "q8_0")
    with pytest.raises(SponError, match="GGUF file's own types"):
        serve_quantized_(model, "gguf")


def llama_permutation(n: int, heads: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q/k projections (the one transformers undoes on load)."""
    return np.arange(n).reshape(heads, 2, n // heads // 2).swapaxes(1, 2).reshape(n)


def test_a_gguf_files_tensors_are_found_by_their_rows_and_keep_their_types(tmp_path):
    """A GGUF holding the model's layers in mixed types, q/k in llama.cpp's row order, names unrelated to the model's."""
    model = tiny_llama()
    types = ["Q8_0", "Q4_0", "Q4_1", "Q5_0"]
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for k, (name, mod) in enumerate(linears.items()):
        qtype = gguf.GGMLQuantizationType[types[k % 4]]
        w = mod.weight.detach().numpy()
        raw = gguf.quants.quantize(w, qtype)
        with torch.no_grad():  # what transformers loads: the dequantized values, in the model's row order
            mod.weight.copy_(gguf_reference(types[k % 4], raw, w.shape))
        if name.endswith(("q_proj", "k_proj")):
            heads = 4 if name.endswith("q_proj") else 2
            raw = raw[llama_permutation(w.shape[0], heads)]
        writer.add_tensor(f"t{k}", raw, raw_shape=raw.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = sparse_spon(model)
    found = gguf_weights(model, path)
    assert len(found) == len(linears)
    for k, name in enumerate(linears):
        assert found[name].type == types[k % 4]
        assert torch.equal(found[name].dequantize(), spon.sparsity.sparse_linear.linear_matrix(
            dict(model.named_modules())[name]).detach())
    ids = random_ids(1, 6)
    want = greedy_generate(model, ids, 8, eos_token_id=None)
    serve_quantized_(model, "gguf", path)
    assert greedy_generate(model, ids, 8, eos_token_id=None) == want
    assert isinstance(model.get_output_embeddings(), QuantLinear)
    assert isinstance(model.get_input_embeddings(), QuantEmbedding)


@needs_cc
def test_bench_gemv_times_quantized_types_against_themselves_and_the_float_kernel(tmp_path):
    from spon.bench.gemv import bench_gemv
    from spon.io.plots import plot_gemv

    r = bench_gemv([(64, 256)], [0.0, 0.5], ["float32", "q4_0"], repeats=3, progress=False, pool_bytes=4 * 2**20)
    q = [x for x in r["rows"] if x["dtype"] == "q4_0"]
    assert [x["sparsity"] for x in q] == [0.0, 0.5] and len(r["bandwidth_gbs"]["between_cases"]) == 2
    for x in q:
        sec = x["seconds"]
        assert set(sec) == {"kernel", "kernel_0pct", "float32_kernel_0pct"}
        assert x["speedup_vs_kernel_0pct"] == pytest.approx(sec["kernel_0pct"] / sec["kernel"])
        assert x["speedup_vs_float32_kernel_0pct"] == pytest.approx(sec["float32_kernel_0pct"] / sec["kernel"])
        assert x["weight_bytes"] == 256 * 64 // 2 + (256 // 32) * 64 * 2  # 4-bit codes and a float16 scale per block
        assert x["gbs_kernel"] == pytest.approx(x["weight_bytes"] * (1 - x["measured_sparsity"]) / sec["kernel"] / 1e9)
    assert plot_gemv({**r, "machine": {}}, tmp_path) == ["gemv.png"]

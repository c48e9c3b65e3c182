"""Weights moved onto transparent huge pages: the same values, ties kept, only where the system has such pages."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import spon
from conftest import COMMON, needs_cc
from spon.serving import huge_pages as hp
from spon.serving.kernels.cpu import rows_readable
from spon.serving.decode import head_on_huge_pages, layers_on_huge_pages, prepare_decode_

needs_thp = pytest.mark.skipif(not hp.huge_pages_available(), reason="no transparent huge pages on this system")


@needs_thp
def test_move_keeps_values_and_ties_and_leaves_small_tensors():
    emb, head = torch.nn.Embedding(16384, 64), torch.nn.Linear(64, 16384, bias=False)
    head.weight = emb.weight  # tied, as most causal LMs' heads
    want = emb.weight.detach().clone()
    assert not hp.is_huge(emb.weight)
    assert hp.move_to_huge_pages_(head.weight)
    assert hp.is_huge(emb.weight) and emb.weight is head.weight and torch.equal(emb.weight, want)
    assert not hp.move_to_huge_pages_(head.weight)  # already there
    small = torch.nn.Parameter(torch.randn(10, 10))
    ptr = small.data_ptr()
    assert not hp.move_to_huge_pages_(small) and small.data_ptr() == ptr


@needs_cc
@needs_thp
def test_prepare_decode_moves_the_tied_head_and_its_logits_stay():
    def model():
        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(**{**COMMON, "vocab_size": 16384, "tie_word_embeddings": True})).eval()
        spon.sparsify_(m, spon.SparsityConfig(sparsity=0.0))
        return m

    moved, kept = model(), model()
    x = torch.randn(1, 1, COMMON["hidden_size"])
    want = F.linear(x, moved.lm_head.weight)
    ptr = kept.lm_head.weight.data_ptr()
    prepare_decode_(moved, head="kernel")
    prepare_decode_(kept, head="kernel", huge_pages=False)
    assert hp.is_huge(moved.lm_head.weight) and moved.get_input_embeddings().weight is moved.lm_head.weight
    assert kept.lm_head.weight.data_ptr() == ptr
    assert head_on_huge_pages(moved) and not head_on_huge_pages(kept)  # what decode.json reports
    with torch.no_grad():
        torch.testing.assert_close(moved.lm_head(x), want, atol=1e-5, rtol=1e-5)  # one token: the head kernel


@needs_thp
def test_huge_slices_lie_back_to_back_aligned_in_one_arena_and_small_sets_stay_put():
    shapes = [(300, 700), (5, 3), (1000, 1000)]
    slices = hp.huge_slices(shapes, torch.float32)
    assert [tuple(t.shape) for t in slices] == shapes and all(t.is_contiguous() for t in slices)
    assert hp.is_huge(slices[0]) and all(t.data_ptr() % 64 == 0 for t in slices)
    assert len({t.untyped_storage().data_ptr() for t in slices}) == 1
    ends = [(t.data_ptr(), t.data_ptr() + t.nbytes) for t in slices]
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ends, ends[1:]))  # in order, not overlapping
    for i, t in enumerate(slices):
        t.fill_(i)
    assert [t.unique().tolist() for t in slices] == [[0.0], [1.0], [2.0]]  # writing one leaves the others
    assert hp.huge_slices([(10, 10)], torch.float32) is None  # under one huge page: not worth a 2 MB page


def _sparse_llama(**sizes):
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(**{**COMMON, **sizes})).eval()
    cfg = spon.SparsityConfig(sparsity=0.5)
    spon.sparsify_(m, cfg)
    g = torch.Generator().manual_seed(1)
    spon.calibrate_(m, [torch.randint(3, COMMON["vocab_size"], (2, 16), generator=g)], cfg, progress=False)
    return m


@needs_cc
@needs_thp
def test_prepare_decode_lays_the_sparse_layers_out_in_one_arena_and_their_outputs_stay():
    sizes = dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2)  # ~7 MB fp32
    moved, kept = _sparse_llama(**sizes), _sparse_llama(**sizes)
    prepare_decode_(moved, head="torch")
    prepare_decode_(kept, head="torch", huge_pages=False)
    assert layers_on_huge_pages(moved) and not layers_on_huge_pages(kept)
    for m in spon.sparse_modules(moved).values():
        assert rows_readable(m.matrix.t()) and m.decode is not None
    ids = torch.randint(3, COMMON["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = moved(ids, use_cache=True), kept(ids, use_cache=True)  # prefill: dense matmuls on the views
        torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
        step = ids[:, -1:]
        got = moved(step, past_key_values=got.past_key_values).logits  # one token: the sparse kernel on the arena
        want = kept(step, past_key_values=want.past_key_values).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    prepare_decode_(moved)  # a second call leaves the laid-out layers alone
    assert layers_on_huge_pages(moved)


@needs_cc
@needs_thp
@pytest.mark.slow
def test_compiled_steps_on_an_arena_equal_eager_steps(monkeypatch):
    monkeypatch.setattr(hp, "MIN_ARENA", 0)  # the tiny model's layers into an arena too
    torch._dynamo.reset()
    moved, kept = _sparse_llama(), _sparse_llama()
    prepare_decode_(moved)
    prepare_decode_(kept, huge_pages=False)
    assert layers_on_huge_pages(moved)
    spon.compile_decode_(moved)
    ids = torch.randint(3, COMMON["vocab_size"], (1, 6), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=0)
    with torch.no_grad():
        want = kept.generate(ids, **kw)
        moved.generate(ids, **kw)  # compiles
        got = moved.generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), atol=1e-4, rtol=1e-4)

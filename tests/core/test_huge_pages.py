"""Weights moved onto transparent huge pages: the same values, ties kept, only where the system has such pages."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import spon
from conftest import COMMON, needs_cc
from spon import huge_pages as hp
from spon.decode import head_on_huge_pages, prepare_decode_

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

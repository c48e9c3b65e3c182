import math

import pytest
import torch
import torch.nn.functional as F

import spon
from conftest import calibrated, make_model, random_ids, with_random_alphas
from spon.evaluation.evaluate import _windows


def manual_nll(model, seq):
    logits = model(input_ids=seq[None]).logits[0]
    return F.cross_entropy(logits[:-1], seq[1:], reduction="sum").item(), seq.numel() - 1


def test_non_overlapping_windows_match_a_manual_computation():
    model = make_model("llama")
    ids = random_ids(1, 64).flatten()
    ppl, n = spon.perplexity(model, ids, spon.EvalProtocol(ctx_len=16, stride=16, batch_size=3), None, progress=False)
    parts = [manual_nll(model, ids[i : i + 16]) for i in range(0, 64, 16)]
    assert n == sum(c for _, c in parts) == 60
    assert ppl == pytest.approx(math.exp(sum(s for s, _ in parts) / n), rel=1e-5)


def test_bos_is_prepended_and_every_token_scored():
    model = make_model("gemma3")
    ids = random_ids(1, 30).flatten()
    ppl, n = spon.perplexity(model, ids, spon.EvalProtocol(ctx_len=16, stride=16), bos=1, progress=False)
    assert n == 30  # with BOS the first text token is predicted too
    s1, _ = manual_nll(model, torch.cat([torch.tensor([1]), ids[:15]]))
    s2, _ = manual_nll(model, torch.cat([torch.tensor([1]), ids[15:]]))
    assert ppl == pytest.approx(math.exp((s1 + s2) / 30), rel=1e-5)


def test_strided_windows_score_each_token_once():
    wins = _windows(100, 32, 16, bos=False)
    scored = [t for _, e, f in wins for t in range(f, e)]
    assert scored == list(range(1, 100))
    assert all(e - b <= 32 for b, e, _ in wins)


def test_text_shorter_than_a_window_is_a_clear_error():
    with pytest.raises(spon.SponError, match="fewer than one 64-token window"):
        spon.perplexity(make_model("llama"), torch.arange(10), spon.EvalProtocol(ctx_len=64, stride=64), None)


def test_gap_recovered():
    assert spon.gap_recovered(10.0, 20.0, 15.0) == pytest.approx(0.5)
    assert spon.gap_recovered(10.0, 20.0, 22.0) == pytest.approx(-0.2)


def test_variants_report_the_measured_sparsity_and_each_perplexity():
    model, _ = calibrated("mistral", 0.5)
    with_random_alphas(model)
    ids = random_ids(1, 128, seed=0).flatten()
    out = spon.evaluate_variants(model, ids, spon.EvalProtocol(ctx_len=32, stride=32), None, progress=False)
    assert out["sparsity_measured_entries"] == pytest.approx(0.5, abs=0.1)
    assert len({out["ppl_dense"], out["ppl_sparse"], out["ppl_spon"]}) == 3  # three different models
    assert out["gap_recovered"] == pytest.approx((out["ppl_sparse"] - out["ppl_spon"]) / (out["ppl_sparse"] - out["ppl_dense"]))
    assert out["tokens_sparsified"] == "all tokens"
    dense_ppl, _ = spon.perplexity(make_model("mistral"), ids, spon.EvalProtocol(ctx_len=32, stride=32), None, progress=False)
    assert out["ppl_dense"] == pytest.approx(dense_ppl, rel=1e-6)


def test_sparsity_with_spon_is_measured_on_the_model_with_its_vectors():
    # vectors shift the inputs of later layers, so a different share of entries passes the fixed thresholds
    model, _ = calibrated("mistral", 0.5)
    ids = random_ids(1, 128, seed=0).flatten()
    protocol = spon.EvalProtocol(ctx_len=32, stride=32)
    with_random_alphas(model, scale=5.0)  # large: the layers after the first read mostly the shifted inputs
    out = spon.evaluate_variants(model, ids, protocol, None, progress=False)
    assert out["sparsity_measured_spon"] < out["sparsity_measured"] - 0.05
    with_random_alphas(model, scale=1e-6)  # next to nothing: the same entries pass
    out = spon.evaluate_variants(model, ids, protocol, None, progress=False)
    assert out["sparsity_measured_spon"] == pytest.approx(out["sparsity_measured"], abs=0.01)

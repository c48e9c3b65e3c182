
import pytest
import torch

import spon
from conftest import make_model, random_ids
from spon.experiments.diagnose import always_active_fraction, anchor_curves, hidden_drift


def test_always_active_fraction_by_hand():
    active = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)
    # n=1: channels 0,1,3 -> 3/4; n=2: 0,3 -> 2/4; n=3: 0 -> 1/4
    assert always_active_fraction(active).tolist() == [0.75, 0.5, 0.25]
    assert always_active_fraction(torch.ones(5, 3, dtype=torch.bool)).tolist() == [1.0] * 5


def test_drift_is_zero_without_sparsity_and_spon_changes_it():
    model = make_model("llama")
    cfg = spon.SparsityConfig(sparsity=0.6)
    spon.sparsify_(model, cfg)
    ids = random_ids(2, 32)
    d0 = hidden_drift(model, ids)  # thresholds not calibrated yet: nothing dropped
    assert d0["sparse"]["mean_rel_l2"] == 0 and d0["sparse"]["kl_final"] == pytest.approx(0, abs=1e-6)
    spon.calibrate_(model, [ids], cfg, progress=False)
    d1 = hidden_drift(model, ids)
    assert d1["sparse"]["mean_rel_l2"] > 0 and d1["sparse"]["rel_l2"][0] == 0  # embeddings are untouched
    assert "sparse+SPON" not in d1
    for m in spon.sparse_modules(model).values():
        m.alpha.fill_(0.01)
    d2 = hidden_drift(model, ids)
    assert d2["sparse"] == d1["sparse"] and d2["sparse+SPON"]["mean_rel_l2"] != d1["sparse"]["mean_rel_l2"]


def test_anchor_curves_fall_with_length_and_sparsity():
    model = make_model("llama")
    spon.sparsify_(model)
    curves = anchor_curves(model, random_ids(2, 64), [0.25, 0.5, 0.75])["by_sparsity"]
    for c in curves.values():
        assert all(a >= b for a, b in zip(c, c[1:]))  # never rises with length
    assert curves["0.25"][-1] >= curves["0.5"][-1] >= curves["0.75"][-1]
    assert 0 < curves["0.75"][0] < curves["0.25"][0] <= 1



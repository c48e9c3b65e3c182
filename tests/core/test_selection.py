"""S(x), thresholds, token positions and the peers' rules as pure maths on small tensors."""

import pytest
import torch

from spon.sparsity.selection import (
    apply_to_positions, column_norms, keep_count, keep_mask, low_rank, score, sparsified_positions, sparsify,
    threshold_from_samples,
)


def test_sparsify_zeroes_entries_at_or_below_threshold():
    x = torch.tensor([-3.0, -0.5, 0.5, 0.49, 2.0, 0.0])
    out = sparsify(x, torch.tensor(0.5))
    assert out.tolist() == [-3.0, 0.0, 0.0, 0.0, 2.0, 0.0]


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.9])
def test_threshold_hits_target_fraction(s):
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0)).abs()
    tau = threshold_from_samples(x, s)
    assert float((x <= tau).float().mean()) == pytest.approx(s, abs=1e-4)


def test_threshold_zero_sparsity_drops_nothing():
    x = torch.zeros(10)
    assert float((x.abs() <= threshold_from_samples(x, 0.0)).sum()) == 0


def test_positions_modes():
    assert sparsified_positions(10, "all", 0.5) == slice(0, 10)
    assert sparsified_positions(10, "decode", 0.5) == slice(0, 0)
    assert sparsified_positions(1, "decode", 0.5) == slice(0, 1)
    assert sparsified_positions(10, "last", 0.3) == slice(7, 10)
    assert sparsified_positions(1, "last", 0.3) == slice(0, 1)


def test_apply_to_positions_leaves_other_tokens_dense():
    x = torch.full((2, 4, 3), 0.1)
    out, mask = apply_to_positions(x, slice(2, 4), lambda t: t.abs() > 0.5)
    assert torch.equal(out[:, :2], x[:, :2]) and bool((out[:, 2:] == 0).all()) and mask.shape == (2, 2, 3)
    assert apply_to_positions(x, slice(0, 0), lambda t: t.abs() > 0.5) == (x, None)


def test_magnitude_threshold_keeps_entries_above_tau():
    x = torch.tensor([[0.1, -2.0, 0.5, -0.4]])
    assert keep_mask(score(x), 0.45).tolist() == [[False, True, True, False]]


def test_wina_scales_by_column_norms():
    w = torch.tensor([[3.0, 0.0, 0.1], [4.0, 1.0, 0.0]])  # column norms 5, 1, 0.1
    assert column_norms(w).tolist() == pytest.approx([5.0, 1.0, 0.1])
    x = torch.tensor([0.2, 0.9, 5.0])  # scores 1.0, 0.9, 0.5: WINA keeps the first, magnitude would keep the last
    assert keep_mask(score(x, column_norms(w)), None, keep=1).tolist() == [True, False, False]
    assert keep_mask(score(x), None, keep=1).tolist() == [False, False, True]


def test_topk_keeps_exactly_k_per_token():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 32, generator=g)
    mask = keep_mask(score(x), keep=keep_count(32, 0.75))
    assert (mask.sum(-1) == 8).all()
    kept_min = torch.where(mask, x.abs(), torch.inf).amin(-1)
    dropped_max = torch.where(mask, -torch.inf, x.abs()).amax(-1)
    assert (kept_min >= dropped_max).all()  # every kept entry is at least as large as every dropped one
    assert keep_mask(score(x), keep=0).sum() == 0 and keep_mask(score(x), keep=32).all()


def test_low_rank_is_exact_at_full_rank_and_sized_by_budget():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    u, v = low_rank(w, budget=1.0)  # r = min(6, 4, floor(24 / 10) = 2) = 2
    assert u.shape == (6, 2) and v.shape == (2, 4)
    u, v = low_rank(w, budget=10.0)
    torch.testing.assert_close(u @ v, w, atol=1e-5, rtol=1e-5)
    u, v = low_rank(w, 0.5)  # r = floor(0.5 * 24 / 10) = 1
    sv = torch.linalg.svdvals(w)
    assert u.shape == (6, 1)  # Eckart-Young: the best rank-1 error is the norm of the dropped singular values
    assert float((u @ v - w).norm()) == pytest.approx(float(sv[1:].norm()), rel=1e-5)

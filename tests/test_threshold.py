import pytest
import torch

from spon.threshold import apply_to_positions, sparsified_positions, sparsify, threshold_from_samples


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

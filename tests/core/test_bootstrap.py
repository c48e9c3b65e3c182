"""The paired bootstrap behind every interval: pure maths on per-window scores."""

import math

import pytest
import torch

from spon.evaluation.intervals import paired_bootstrap, paired_ratio


def test_identical_windows_give_a_point_interval_at_the_perplexity():
    nll = torch.full((10,), 2.0 * 50)  # every window: 50 tokens at NLL 2
    ci = paired_bootstrap({"dense": nll}, torch.full((10,), 50))
    assert ci["ppl_dense"] == pytest.approx([math.exp(2.0)] * 2)


def test_interval_covers_the_estimate_and_narrows_with_more_windows():
    g = torch.Generator().manual_seed(0)

    def width(n):
        counts = torch.full((n,), 100)
        nll = (2.0 + 0.3 * torch.randn(n, generator=g)) * 100
        lo, hi = paired_bootstrap({"dense": nll}, counts)["ppl_dense"]
        assert lo <= math.exp(float(nll.sum() / counts.sum())) <= hi
        return hi - lo

    assert width(400) < 0.6 * width(25)


def test_pairing_makes_a_constant_shift_certain():
    """sparse+SPON is exactly halfway between dense and sparse on every window: the gap recovered is 50% in every
    resample, however much the windows themselves vary."""
    g = torch.Generator().manual_seed(1)
    counts = torch.full((30,), 64)
    base = (2.0 + 0.5 * torch.rand(30, generator=g)) * 64
    nll = {"dense": base, "sparse": base + 0.4 * 64, "spon": base + 0.2 * 64}
    ci = paired_bootstrap(nll, counts)
    lo, hi = ci["gap_recovered"]
    assert lo == pytest.approx(hi, abs=0.02) and 0.45 < lo < 0.56  # log-linear halfway in NLL, ~half in perplexity
    assert ci["ppl_sparse"][1] > ci["ppl_dense"][1]


def test_paired_ratio_separates_a_consistent_small_gain_that_marginal_intervals_cannot():
    """b is 2% better than a on every window while the windows themselves differ by 30%: each model's own interval
    overlaps the other's, but the paired ratio excludes 1."""
    g = torch.Generator().manual_seed(2)
    counts = torch.full((15,), 500)
    a = (2.0 + 0.3 * torch.randn(15, generator=g)) * 500
    b = a - math.log(1.02) * 500 + 0.002 * torch.randn(15, generator=g) * 500
    ci = paired_bootstrap({"a": a, "b": b}, counts)
    assert ci["ppl_b"][1] > ci["ppl_a"][0]  # the marginal intervals overlap
    ratio, (lo, hi) = paired_ratio(a, b, counts)
    assert ratio == pytest.approx(1.02, rel=1e-3) and 1.0 < lo <= ratio <= hi < 1.03
    same, (lo, hi) = paired_ratio(a, a, counts)
    assert same == 1.0 and lo == hi == pytest.approx(1.0)

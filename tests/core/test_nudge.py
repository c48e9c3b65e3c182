import pytest
import torch

import spon
from conftest import calibrated, random_ids, with_random_alphas
from spon.evaluation.evaluate import evaluate_variants
from spon.evaluation.nudge import jittered_thresholds, nudged_thresholds, rounding_floor

PROTO = spon.EvalProtocol(ctx_len=16, stride=16)


def taus(model):
    return {n: float(m.threshold) for n, m in spon.sparse_modules(model).items()}


def test_nudged_thresholds_move_each_by_eps_and_come_back_exactly():
    model, _ = calibrated("llama")
    before = {n: m.threshold.detach().clone() for n, m in spon.sparse_modules(model).items()}
    with nudged_thresholds(model, 1e-3, torch.Generator().manual_seed(0)):
        ratios = [float(m.threshold / before[n]) for n, m in spon.sparse_modules(model).items()]
        inside = taus(model)
    assert all(r == pytest.approx(1.001, rel=1e-6) or r == pytest.approx(0.999, rel=1e-6) for r in ratios)
    assert {round(r, 4) for r in ratios} == {0.999, 1.001}  # both signs drawn
    assert all(torch.equal(m.threshold, before[n]) for n, m in spon.sparse_modules(model).items())
    with nudged_thresholds(model, 1e-3, torch.Generator().manual_seed(0)):
        assert taus(model) == inside  # the draw is the generator's


def test_rounding_floor_spans_the_draws_and_is_zero_without_a_nudge():
    model, _ = calibrated("qwen2", sparsity=0.5)
    with_random_alphas(model)
    ids = random_ids(1, 96).flatten()

    def score():
        return evaluate_variants(model, ids, PROTO, None, progress=False)

    base = score()
    still = rounding_floor(score, model, base, 2, eps=0.0, progress=False)
    assert still["gap_recovered"]["std"] == 0.0 and still["ppl_spon"]["min"] == still["ppl_spon"]["max"] == base["ppl_spon"]
    moved = rounding_floor(score, model, base, 3, eps=0.05, progress=False)
    assert len(moved["draws"]) == 3 and moved["ppl_sparse"]["max"] > moved["ppl_sparse"]["min"]
    for key in ("ppl_sparse", "ppl_spon", "gap_recovered"):
        values = [base[key], *(d[key] for d in moved["draws"])]
        assert moved[key]["min"] == min(values) and moved[key]["max"] == max(values)
    assert score()["ppl_sparse"] == base["ppl_sparse"]  # the thresholds were put back


def test_jittered_thresholds_scale_each_by_its_own_lognormal_factor_and_come_back():
    model, _ = calibrated("llama")
    mods = spon.sparse_modules(model)
    before = {n: m.threshold.detach().clone() for n, m in mods.items()}
    z = torch.randn(len(mods), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with jittered_thresholds(model, 0.1, torch.Generator().manual_seed(3)):
        for (n, m), zi in zip(mods.items(), z.tolist()):
            assert float(m.threshold) == pytest.approx(float(before[n]) * float(torch.tensor(0.1 * zi).exp()), rel=1e-6)
        assert len({round(float(m.threshold / before[n]), 6) for n, m in mods.items()}) > 1  # one factor per layer
    assert all(torch.equal(m.threshold, before[n]) for n, m in mods.items())

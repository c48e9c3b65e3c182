import math

import pytest
import torch

from conftest import make_model, random_ids
from spon import SparsityConfig, TrainConfig, calibrate_, fold_, sparsify_
from spon.io.artifact import load_artifact, save_artifact
from spon.sparsity.sparsify import without_spon
from spon.io.plots import layer_and_kind
from spon.experiments.sweep import iso_sparsity, summarise
from spon.training.train import spon_parameters_, train_spon_


def test_iso_sparsity_interpolates_log_perplexity():
    pts = [(0.4, 10.0), (0.5, 12.0), (0.6, 20.0), (0.7, 40.0)]
    s, note = iso_sparsity(pts, 15.0)
    expect = 0.5 + (math.log(15) - math.log(12)) / (math.log(20) - math.log(12)) * 0.1
    assert note == "" and s == pytest.approx(expect)
    assert iso_sparsity(pts, 12.0) == (pytest.approx(0.5), "")  # exactly on a point
    assert iso_sparsity(pts, 50.0) == (0.7, "beyond")  # a lower bound: the sweep never reaches the reference
    assert iso_sparsity(pts, 5.0) == (None, "never")


def test_summary_uses_plain_sparse_at_reference():
    rows = [
        {"sparsity": 0.4, "ppl_sparse": 14.0, "ppl_spon": 12.0},
        {"sparsity": 0.5, "ppl_sparse": 20.0, "ppl_spon": 15.0},
        {"sparsity": 0.6, "ppl_sparse": 40.0, "ppl_spon": 25.0},
    ]
    out = summarise(rows, 0.5)
    assert out["iso_reference_ppl"] == 20.0
    assert 0.5 < out["iso_sparsity"] < 0.6 and out["iso_note"] == ""
    assert "iso_sparsity_measured" not in out  # rows from before SPON's own sparsity was measured


def test_summary_on_measured_sparsity_uses_what_each_model_runs_at():
    rows = [
        {"sparsity": 0.4, "ppl_sparse": 14.0, "ppl_spon": 12.0, "sparsity_measured": 0.41, "sparsity_measured_spon": 0.36},
        {"sparsity": 0.5, "ppl_sparse": 20.0, "ppl_spon": 15.0, "sparsity_measured": 0.52, "sparsity_measured_spon": 0.46},
        {"sparsity": 0.6, "ppl_sparse": 40.0, "ppl_spon": 25.0, "sparsity_measured": 0.63, "sparsity_measured_spon": 0.55},
    ]
    out = summarise(rows, 0.5)
    assert out["iso_reference_measured"] == pytest.approx(0.52)
    # SPON reaches perplexity 20 between its 46% and 55% points: by target past 50%, by measured sparsity at 50.7%
    assert 0.5 < out["iso_sparsity"] < 0.6 and 0.46 < out["iso_sparsity_measured"] < 0.55
    # the same log-perplexity crossing, placed on the measured axis: 0.5..0.6 maps to 0.46..0.55
    assert out["iso_sparsity_measured"] == pytest.approx(0.46 + (out["iso_sparsity"] - 0.5) * 0.9)


def test_layer_and_kind():
    assert layer_and_kind("model.layers.3.mlp.down_proj") == (3, "mlp.down_proj")
    assert layer_and_kind("transformer.h.11.attn.c_attn") == (11, "attn.c_attn")


def _calibrated(arch="llama", sparsity=0.6):
    model = make_model(arch)
    cfg = SparsityConfig(sparsity=sparsity)
    sparsify_(model, cfg)
    calibrate_(model, [random_ids(4, 32, seed=s) for s in range(2)], cfg, progress=False)
    return model


def test_spon_on_mlp_trains_only_mlp_vectors():
    model = _calibrated()
    cfg = TrainConfig(steps=12, batch_size=4, seq_len=64, eval_every=4, warmup=2, lr=1e-3, spon_on="mlp")
    ids = random_ids(1, 1024, seed=5).view(-1)
    # random tiny models have nothing to generalise: validate on training tokens (as test_train does)
    result = train_spon_(model, ids, ids[:256], cfg, progress=False)
    assert result.kept == "trained"
    from spon.sparsity.sparsify import sparse_modules

    mods = sparse_modules(model)
    assert any(bool(m.alpha.any()) for n, m in mods.items() if ".mlp." in n)
    assert all(not m.alpha.any() for n, m in mods.items() if ".mlp." not in n)


def test_unknown_spon_on_is_refused():
    from spon.errors import SponError

    with pytest.raises(SponError, match="spon_on"):
        TrainConfig(spon_on="heads")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_output_space_neurons_train_fold_and_round_trip(arch, tmp_path):
    model = _calibrated(arch)
    cfg = TrainConfig(steps=12, batch_size=4, seq_len=64, eval_every=4, warmup=2, lr=1e-3, neurons=3)
    ids = random_ids(1, 1024, seed=5).view(-1)
    result = train_spon_(model, ids, ids[:256], cfg, progress=False)
    from spon.sparsity.sparsify import sparse_modules

    m = next(iter(sparse_modules(model).values()))
    assert m.neurons.shape == (m.out_features, 3) and result.kept == "trained"
    x = random_ids(2, 32, seed=5)
    with torch.no_grad():
        before = model(input_ids=x).logits
        with without_spon(model):
            plain = model(input_ids=x).logits
    assert not torch.allclose(before, plain)
    save_artifact(model, tmp_path / "a", {"name": "tiny"})
    other = make_model(arch)
    load_artifact(other, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=x).logits, before)
        fold_(model)
        torch.testing.assert_close(model(input_ids=x).logits, before, atol=1e-5, rtol=1e-5)
    assert all(mm.neurons is None for mm in sparse_modules(model).values())


def test_spon_parameters_select_by_name():
    model = _calibrated()
    attn = spon_parameters_(model, TrainConfig(spon_on="attention"))
    assert len(attn) == 2 * 4  # q, k, v, o in each of the 2 blocks




def test_seed_spread_summarises_each_sparsity_over_its_seeds():
    from spon.experiments.sweep import seed_spread

    rows = [{"sparsity": 0.5, "seed": s, "gap_recovered": g, "ppl_spon": p} for s, g, p in ((0, 0.5, 20.0), (1, 0.6, 19.0), (2, 0.7, 18.0))]
    rows.append({"sparsity": 0.6, "seed": 0, "gap_recovered": 0.8, "ppl_spon": 25.0})  # one seed: no spread
    out = seed_spread(rows)
    assert list(out) == ["0.50"] and out["0.50"]["seeds"] == [0, 1, 2]
    assert out["0.50"]["gap_recovered"] == pytest.approx({"mean": 0.6, "std": 0.1, "min": 0.5, "max": 0.7})
    assert out["0.50"]["ppl_spon"]["mean"] == pytest.approx(19.0)

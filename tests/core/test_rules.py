"""Each peer rule on the tiny architectures, through sparsify_ / calibrate_ (the maths alone: test_selection.py)."""

import pytest
import torch

import spon
from conftest import make_model, random_ids


def _run(arch, **kw):
    model = make_model(arch)
    cfg = spon.SparsityConfig(sparsity=0.5, **kw)
    spon.sparsify_(model, cfg)
    spon.calibrate_(model, [random_ids(2, 32, seed=s) for s in range(3)], cfg, progress=False)
    return model, cfg


@pytest.mark.parametrize("rule", ["magnitude", "wina", "cats", "rsparse"])
@pytest.mark.parametrize("selection", ["threshold", "topk"])
def test_rule_runs_hits_its_target_and_keeps_dense_exact(arch, rule, selection, tmp_path):
    model, cfg = _run(arch, rule=rule, selection=selection)
    ids = random_ids(2, 32, seed=1)
    with torch.no_grad(), spon.measure_sparsity(model) as sp:
        sparse_logits = model(input_ids=ids).logits
    measured = sp["activations"] if rule == "cats" else sp["entries"]
    assert abs(measured - 0.5) < (0.02 if selection == "topk" else 0.12), (rule, selection, measured)
    reference = make_model(arch)
    with torch.no_grad():
        with spon.dense(model):
            torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=0, rtol=0)
        assert not torch.allclose(sparse_logits, reference(input_ids=ids).logits)
    spon.save_artifact(model, tmp_path / "a", {"name": arch})
    spon.load_artifact(reference, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(reference(input_ids=ids).logits, sparse_logits)
    spon.unsparsify_(reference)
    assert not spon.sparse_modules(reference) and not spon.sparsity.sparsify.sparse_activations(reference)


def test_wina_keeps_other_entries_than_magnitude():
    wina, _ = _run("llama", rule="wina")
    mag, _ = _run("llama")
    x = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0))
    a, b = spon.sparse_modules(wina)["model.layers.0.self_attn.q_proj"], spon.sparse_modules(mag)["model.layers.0.self_attn.q_proj"]
    norms = a.weight.float().norm(dim=0)  # WINA keeps |x_i| * ||W[:, i]|| > tau, by its definition
    assert torch.equal(a.select(x), x.abs() * norms > a.threshold)
    assert torch.equal(b.select(x), x.abs() > b.threshold)
    assert not torch.equal(a.select(x), b.select(x))


def test_rsparse_low_rank_path_brings_outputs_closer_to_dense():
    ids = random_ids(2, 32, seed=1)
    ref = make_model("llama")
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        err = {}
        for rule in ("magnitude", "rsparse"):
            model, _ = _run("llama", rule=rule, rsparse_budget=0.5)
            err[rule] = float((model(input_ids=ids).logits - want).norm())
    assert err["rsparse"] < err["magnitude"]


def test_cats_zeroes_the_same_channels_for_up_and_down():
    model, _ = _run("llama", rule="cats")
    seen = {}
    down = spon.sparse_modules(model)["model.layers.0.mlp.down_proj"]
    h = down.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    act = spon.sparsity.sparsify.sparse_activations(model)["model.layers.0.mlp.act_fn"]
    h2 = act.register_forward_hook(lambda m, args, out: seen.setdefault("a", out))
    with torch.no_grad():
        model(input_ids=random_ids(1, 16))
    h.remove(), h2.remove()
    assert torch.equal(seen["x"] == 0, seen["a"] == 0)  # down's input is zero exactly where the activation was cut
    assert 0.3 < float((seen["a"] == 0).float().mean()) < 0.7


def test_unknown_rule_is_refused():
    with pytest.raises(spon.SponError, match="unknown rule"):
        spon.SparsityConfig(rule="magic")


def test_greedy_allocation_keeps_the_weighted_average_per_block(arch):
    from spon.sparsity.allocate import block_of, greedy_allocate_

    model = make_model(arch)
    cfg = spon.SparsityConfig(sparsity=0.5, allocation="greedy")
    spon.sparsify_(model, cfg)
    batches = [random_ids(2, 32, seed=s) for s in range(3)]
    new = greedy_allocate_(model, batches, cfg, step=0.05, progress=False)
    mods = spon.sparse_modules(model)
    levels = {n: new.sparsity_for(n) for n in mods}
    for block in {block_of(n) for n in mods}:
        names = [n for n in mods if block_of(n) == block]
        size = {n: mods[n].out_features * mods[n].in_features for n in names}
        avg = sum(levels[n] * size[n] for n in names) / sum(size.values())
        assert abs(avg - 0.5) < 1e-3, (block, avg)
    assert len(set(round(v, 3) for v in levels.values())) > 1  # not uniform
    assert model.spon_config.overrides == new.overrides
    ids = random_ids(2, 32, seed=7)
    with torch.no_grad(), spon.measure_sparsity(model) as sp:
        model(input_ids=ids)
    assert abs(sp["weighted"] - 0.5) < 0.1


def test_greedy_allocation_keeps_what_the_overrides_pin_and_the_head_is_a_block_of_its_own(arch):
    import re

    from spon.sparsity.allocate import block_of, greedy_allocate_
    from spon.sparsity.sparsify import output_head

    model = make_model(arch)
    head = output_head(model)[0]
    spon.sparsify_(model, spon.SparsityConfig(sparsity=0.5, sparsify_head=True))
    mods = spon.sparse_modules(model)
    first = next(n for n in mods if block_of(n))  # one decoder projection, pinned at 20%
    pins = {f"^{re.escape(first)}$": 0.2, f"^{re.escape(head)}$": 0.3}
    cfg = spon.SparsityConfig(sparsity=0.5, allocation="greedy", sparsify_head=True, overrides=pins)
    new = greedy_allocate_(model, [random_ids(2, 32, seed=s) for s in range(3)], cfg, step=0.05, progress=False)
    assert new.sparsity_for(first) == pytest.approx(0.2) and new.sparsity_for(head) == pytest.approx(0.3)
    block = block_of(first)  # the block's other projections carry the target, weighted by size
    others = [n for n in mods if block_of(n) == block and n != first]
    size = {n: mods[n].out_features * mods[n].in_features for n in others}
    avg = sum(new.sparsity_for(n) * size[n] for n in others) / sum(size.values())
    assert avg == pytest.approx(0.5, abs=1e-3)
    assert set(new.overrides) == {f"^{re.escape(n)}$" for n in mods}  # exact per-module entries, artifacts carry them



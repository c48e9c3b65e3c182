"""Each peer rule's definition on small tensors: which entries are kept."""

import pytest
import torch

from spon.rules import column_norms, keep_count, keep_mask, low_rank, score


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
    low = w @ torch.eye(4)
    err1 = (low_rank(w, 0.5)[0] @ low_rank(w, 0.5)[1] - w).norm()
    assert err1 < w.norm()  # a rank-1 approximation still explains part of W


# --- each rule on the tiny architectures, through sparsify_/calibrate_ ---------------------------------

import spon  # noqa: E402
from conftest import make_model, random_ids  # noqa: E402


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
    assert not spon.sparse_modules(reference) and not spon.sparsify.sparse_activations(reference)


def test_wina_keeps_other_entries_than_magnitude():
    wina, _ = _run("llama", rule="wina")
    mag, _ = _run("llama")
    x = torch.randn(1, 8, 32)
    name = "model.layers.0.mlp.down_proj"
    a, b = spon.sparse_modules(wina)["model.layers.0.self_attn.q_proj"], spon.sparse_modules(mag)["model.layers.0.self_attn.q_proj"]
    assert not torch.equal(a.select(x), b.select(x))
    assert name in spon.sparse_modules(wina)


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
    act = spon.sparsify.sparse_activations(model)["model.layers.0.mlp.act_fn"]
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
    from spon.allocate import block_of, greedy_allocate_

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


def test_greedy_allocation_cli_writes_per_module_overrides(capsys, model_folder, tmp_path):
    import json

    from conftest import random_text
    from spon.cli import main

    text = tmp_path / "t.txt"
    text.write_text(random_text(6000))
    art = tmp_path / "art"
    assert main(["calibrate", "--model", str(model_folder), "--data", str(text), "--out", str(art), "--quiet",
                 "--calib-tokens", "512", "--allocation", "greedy", "--rule", "wina"]) == 0
    meta = json.loads((art / "spon_config.json").read_text())
    assert meta["sparsity"]["allocation"] == "greedy" and meta["sparsity"]["rule"] == "wina"
    assert len(meta["sparsity"]["overrides"]) == len(meta["modules"])


def test_compare_cli_runs_every_method(capsys, model_folder, tmp_path):
    import json

    from conftest import random_text
    from spon.cli import main

    text = tmp_path / "t.txt"
    text.write_text(random_text(20000, distinct=8))
    out = tmp_path / "cmp"
    assert main(["compare", "--model", str(model_folder), "--data", str(text), "--out", str(out), "--quiet", "--calib-tokens", "512",
                 "--steps", "2", "--seq-len", "32", "--ctx-len", "32", "--train-sequences", "8"]) == 0
    r = json.loads((out / "compare.json").read_text())
    assert [x["method"] for x in r["rows"]] == ["teal", "teal-greedy", "wina", "cats", "rsparse", "topk"]
    assert (out / "compare.png").is_file() and "| cats |" in (out / "compare.md").read_text()
    capsys.readouterr()
    assert main(["compare", "--methods", "teal,nope", "--model", str(model_folder)]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err

import re

import pytest
import torch
from torch import nn

import spon
from conftest import LINEARS_PER_BLOCK, calibrated, make_model, random_ids, with_random_alphas
from spon.sparsity.sparse_linear import is_linear


def test_swaps_every_decoder_linear_and_nothing_else(arch):
    model = make_model(arch)
    mods = spon.sparsify_(model)
    assert len(mods) == LINEARS_PER_BLOCK.get(arch, 7) * model.config.num_hidden_layers
    pattern = {"gpt2": r"h\.\d+\.(attn|mlp)\.c_\w+$",
               "falcon": r"h\.\d+\.(self_attention\.(query_key_value|dense)|mlp\.dense_\w+)$"}.get(
        arch, r"layers\.\d+\.(self_attn|mlp)\.\w+_proj$")
    assert all(re.search(pattern, n) for n in mods)
    assert type(model.lm_head) is nn.Linear
    assert not any(is_linear(m) for n, m in model.named_modules() if n != "lm_head")


def test_shares_weights_with_the_original(arch):
    model = make_model(arch)
    name = next(iter(spon.target_linears(model, spon.SparsityConfig())))
    w = model.get_submodule(name).weight
    spon.sparsify_(model)
    assert model.get_submodule(name).weight is w


def test_dense_context_gives_exact_dense_logits(arch):
    ids = random_ids(2, 16)
    ref = make_model(arch)(input_ids=ids).logits
    model, _ = calibrated(arch)
    with spon.dense(model):
        assert torch.equal(model(input_ids=ids).logits, ref)
    assert not torch.allclose(model(input_ids=ids).logits, ref)  # sparse again after the block


def test_calibration_hits_target_sparsity(arch):
    for target in (0.3, 0.6):
        model, _ = calibrated(arch, target)
        mods = spon.sparse_modules(model)
        below = {n: [0, 0] for n in mods}

        def hook(name):
            def fn(mod, args):
                below[name][0] += int((args[0].abs() <= mod.threshold).sum())
                below[name][1] += args[0].numel()
            return fn

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
        with spon.dense(model), torch.no_grad():
            for s in range(4):  # the calibration tokens, through the dense model as in calibration
                model(input_ids=random_ids(2, 32, seed=s))
        for h in handles:
            h.remove()
        for name, (k, n) in below.items():
            assert k / n == pytest.approx(target, abs=0.01), name
        with spon.measure_sparsity(model) as sp, torch.no_grad():
            model(input_ids=random_ids(2, 32, seed=0))
        assert sp["entries"] == pytest.approx(target, abs=0.05)  # upstream sparsity shifts later inputs a little


def test_calibration_on_own_inputs_runs_the_model_with_its_vectors_at_the_target():
    from conftest import with_random_alphas

    batches = [random_ids(2, 32, seed=s) for s in range(4)]
    model, cfg = calibrated("llama", 0.5)
    with_random_alphas(model, scale=2.0)  # shifts every later layer's inputs away from the dense ones

    def measured():
        with spon.measure_sparsity(model) as sp, torch.no_grad():
            for ids in batches:
                model(input_ids=ids)
        return sp["entries"]

    assert abs(measured() - 0.5) > 0.05  # thresholds from dense inputs miss the target on the model with vectors
    spon.calibrate_(model, batches, cfg, inputs="own", passes=3, progress=False)
    assert measured() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(spon.SponError, match="'dense' or 'own'"):
        spon.calibrate_(model, batches, cfg, inputs="sparse", progress=False)


def test_overrides_set_per_layer_sparsity():
    model, _ = calibrated("llama", 0.5, overrides={r"mlp\.down_proj": 0.1})
    with spon.measure_sparsity(model) as sp, torch.no_grad():
        model(input_ids=random_ids(2, 32, seed=0))
    for name, value in sp["per_layer"].items():
        assert value == pytest.approx(0.1 if "down_proj" in name else 0.5, abs=0.08)


def test_decode_mode_keeps_prefill_dense_and_sparsifies_single_steps():
    model, _ = calibrated("llama", 0.5, tokens="decode")
    ref = make_model("llama")
    ids = random_ids(1, 12)
    assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    with spon.measure_sparsity(model) as sp, torch.no_grad():
        model(input_ids=ids[:, :1])
    assert sp["entries"] > 0.2


def test_last_mode_sparsifies_only_the_tail():
    model, _ = calibrated("llama", 0.5, tokens="last", last_fraction=0.25)
    ref = make_model("llama")
    ids = random_ids(1, 16)
    out, want = model(input_ids=ids).logits, ref(input_ids=ids).logits
    assert torch.equal(out[:, :12], want[:, :12])
    assert not torch.allclose(out[:, 12:], want[:, 12:])


@pytest.mark.parametrize("name", ["qwen2", "gpt2"])
def test_unsparsify_restores_plain_linears(name):
    model, _ = calibrated(name)
    spon.unsparsify_(model)
    ids = random_ids(1, 8)
    assert not spon.sparse_modules(model)
    assert type(model.get_submodule(next(iter(spon.target_linears(model, spon.SparsityConfig()))))) is not spon.SparseLinear
    assert torch.equal(model(input_ids=ids).logits, make_model(name)(input_ids=ids).logits)


def test_no_linears_is_a_clear_error():
    with pytest.raises(spon.SponError, match="no nn.Linear"):
        spon.sparsify_(nn.Sequential(nn.Embedding(4, 4)))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range(bad):
    with pytest.raises(spon.SponError, match=r"\[0, 1\)"):
        spon.SparsityConfig(sparsity=bad)


def test_sparsify_head_adds_the_output_head_by_role_and_an_artifact_keeps_it(arch, tmp_path):
    from spon.sparsity.sparse_linear import SparseLinear

    model, cfg = calibrated(arch, sparsify_head=True)
    head = model.get_output_embeddings()
    assert isinstance(head, SparseLinear) and float(head.threshold) > 0  # calibrated like the other layers
    assert set(spon.sparse_modules(model)) == set(spon.target_linears(make_model(arch), spon.SparsityConfig())) | {"lm_head"}
    with_random_alphas(model)
    spon.save_artifact(model, tmp_path / "a", {"name": "tiny", "architecture": "test"})
    fresh = make_model(arch)
    spon.load_artifact(fresh, tmp_path / "a")
    assert isinstance(fresh.get_output_embeddings(), SparseLinear)
    ids = random_ids(2, 16)
    assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


def test_sparsify_head_with_cats_is_a_one_line_error():
    with pytest.raises(spon.SponError, match="drop --sparsify-head"):
        spon.SparsityConfig(rule="cats", sparsify_head=True)


class Scaled(nn.Linear):
    """A subclass of nn.Linear whose forward is not F.linear (twice it): must be left alone."""

    def forward(self, x):
        return 2 * super().forward(x)


class Dressed(nn.Linear):
    """A subclass of nn.Linear that computes F.linear its own way, with a field of its own (as Falcon's FalconLinear)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.tag = "kept"

    def forward(self, x):
        return x @ self.weight.T + self.bias


def test_subclasses_of_linear_are_wrapped_only_where_their_forward_is_f_linear():
    model = make_model("llama")
    mlp = model.model.layers[0].mlp
    w_up, w_down = mlp.up_proj.weight, mlp.down_proj.weight
    for name, cls in (("up_proj", Dressed), ("down_proj", Scaled)):
        old = getattr(mlp, name)
        new = cls(old.in_features, old.out_features, bias=True)
        new.weight = old.weight
        setattr(mlp, name, new)
    ids = random_ids(1, 12)
    ref = model(input_ids=ids).logits
    with pytest.warns(UserWarning, match=r"spon: 11% .*stay dense, in modules that are not sparse linears \(Scaled; e\.g\. model\.layers\.0\.mlp\.down_proj\)"):
        mods = spon.sparsify_(model)
    assert "model.layers.0.mlp.up_proj" in mods and "model.layers.0.mlp.down_proj" not in mods
    assert type(mlp.down_proj) is Scaled and mlp.up_proj.weight is w_up
    with spon.dense(model):
        assert torch.equal(model(input_ids=ids).logits, ref)
    spon.unsparsify_(model)  # the subclass comes back as itself, with its own field and the same weights
    assert type(mlp.up_proj) is Dressed and mlp.up_proj.tag == "kept" and mlp.up_proj.weight is w_up
    assert mlp.down_proj.weight is w_down
    assert torch.equal(model(input_ids=ids).logits, ref)


def test_quantised_or_meta_subclasses_are_not_linear():
    lin = Dressed(8, 4)
    assert is_linear(lin)
    lin.weight = nn.Parameter(torch.zeros(4, 8, dtype=torch.int8), requires_grad=False)  # not floating point
    assert not is_linear(lin)
    assert not is_linear(Dressed(8, 4, device="meta"))


def _tiny_mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    from conftest import COMMON

    torch.manual_seed(0)
    return MixtralForCausalLM(MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)).eval()


def test_moe_experts_are_sparsified_and_routers_stay_dense(recwarn):
    model = _tiny_mixtral()
    fused = any(p.dim() == 3 for p in model.parameters())  # transformers 5: a block's experts as 3-D tensors
    mods = spon.sparsify_(model)
    experts = model.config.num_local_experts
    assert not [n for n, m in mods.items() if m.out_features == experts]  # the routers stay dense
    # transformers 5: each expert's gate_up and down, views of the 3-D tensors; transformers 4: its w1, w2, w3
    assert len(mods) == (4 + (2 if fused else 3) * experts) * model.config.num_hidden_layers
    dense, total = spon.dense_block_weights(model, spon.SparsityConfig())
    routers = [n for n, m in model.named_modules() if n.endswith(".gate")]  # `block_sparse_moe.gate` on transformers 4
    assert set(dense) == set(routers) and len(routers) == model.config.num_hidden_layers
    assert total == sum(dense.values()) + sum(m.weight.numel() for m in mods.values())  # the rest all sparsified
    assert not [w for w in recwarn if "spon:" in str(w.message)]


class Doubled(nn.Linear):
    """A layer that is not a plain linear (its forward is not F.linear): sparsify_ leaves it alone."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_weights_left_dense_in_other_modules_are_named_in_one_notice():
    model = make_model("llama")
    for layer in model.model.layers:
        old = layer.mlp.down_proj
        layer.mlp.down_proj = Doubled(old.in_features, old.out_features, bias=False)
    with pytest.warns(UserWarning) as caught:
        mods = spon.sparsify_(model)
    notices = [str(w.message) for w in caught if str(w.message).startswith("spon: ")]
    assert len(mods) == 6 * model.config.num_hidden_layers
    dense, total = spon.dense_block_weights(model, spon.SparsityConfig())
    assert set(dense) == {f"model.layers.{i}.mlp.down_proj" for i in range(model.config.num_hidden_layers)}
    share = sum(dense.values()) / total
    assert len(notices) == 1 and re.search(rf"spon: {share:.0%} of the decoder blocks' weights stay dense, in modules "
                                           r"that are not sparse linears \(Doubled; e\.g\. model\.layers\.\d\.mlp\.down_proj\)",
                                           notices[0])


def test_no_notice_where_every_block_weight_is_sparsified(arch, recwarn):
    spon.sparsify_(make_model(arch))
    assert not [w for w in recwarn if "spon:" in str(w.message)]
    assert spon.dense_block_weights(make_model(arch), spon.SparsityConfig())[0]  # before sparsify_: all dense


def test_the_cli_shows_the_librarys_notices_as_one_line():
    import io

    from spon.cli.main import _show_warning

    out = io.StringIO()
    _show_warning(UserWarning("spon: 57% of the ..."), UserWarning, "x.py", 1, file=out)
    assert out.getvalue() == "spon: 57% of the ...\n"

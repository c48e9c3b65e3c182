"""Fused experts (transformers 5's 3-D expert tensors) as per-expert linear layers: same numbers, same memory, and back."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import spon
from conftest import COMMON, random_ids, with_random_alphas
from spon.sparsity.experts import ExpertLinears, fuse_experts_, is_fused_experts, unfuse_experts_

MOE = {
    "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**COMMON, num_experts=4, num_experts_per_tok=2,
                                                                moe_intermediate_size=32, shared_expert_intermediate_size=64)),
    # [E, in, out] weights with biases, gate and up interleaved, a clamped gate of its own (`_apply_gate`)
    "gpt_oss": lambda: T.GptOssForCausalLM(T.GptOssConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2, head_dim=8)),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MOE[name]().eval()
    if not any(is_fused_experts(m) for m in model.modules()):
        pytest.skip("this transformers keeps no experts as 3-D tensors with layout flags (transformers 4)")
    with torch.no_grad():  # spread the activations (random init is tiny) so the experts matter in the logits
        for n, p in model.named_parameters():
            if p.dim() == 3 or "experts" in n:
                p.normal_(0, 0.2)
    return model


def unfuse_and_fuse_back(model, path: str, check) -> None:
    """Unfusing every experts module keeps the logits (many tokens, and one token: its own path); `check(fused
    parameters by name, unfused module)` holds at `path`; fusing back gives the same module, state_dict keys and memory."""
    ids = random_ids(2, 12, seed=1)
    with torch.no_grad():
        ref, ref_one = model(input_ids=ids).logits, model(input_ids=ids[:1, :1]).logits
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    fused = model.get_submodule(path)
    params = dict(fused.named_parameters())  # held: they leave the module while it is unfused
    unfuse_experts_(model)
    check(params, model.get_submodule(path))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(input_ids=ids[:1, :1]).logits, ref_one, atol=1e-5, rtol=1e-5)
    fuse_experts_(model)
    assert model.get_submodule(path) is fused
    after = model.state_dict()
    assert list(after) == list(before)
    for k, (ptr, value) in before.items():
        assert after[k].data_ptr() == ptr and torch.equal(after[k], value), k  # the same memory, nothing copied


@pytest.mark.parametrize("name", sorted(MOE))
def test_unfused_experts_compute_the_same_on_the_same_memory_and_fuse_back(name):
    model = build(name)

    def check(params, layers):
        assert isinstance(layers, ExpertLinears) and len(layers.gate_up_proj) == len(layers.down_proj) == 4
        assert layers.gate_up_proj[3].weight.data_ptr() == params["gate_up_proj"][3].data_ptr()  # a view, not a copy
        assert len([m for m in model.modules() if isinstance(m, ExpertLinears)]) == model.config.num_hidden_layers

    unfuse_and_fuse_back(model, "model.layers.0.mlp.experts", check)


def test_experts_flagged_as_transformers_5_0_to_5_2_did_without_has_gate_unfuse_gated():
    """transformers 5.0-5.2's `@use_experts_implementation` set `has_bias` and `is_transposed` only: every such module
    gated (`gate_up_proj`, `_apply_gate`). Without `has_gate` they must still unfuse, gated, and compute the same."""
    model = build("mixtral")
    ids = random_ids(2, 12, seed=1)
    with torch.no_grad():
        ref = model(input_ids=ids).logits  # this transformers' own forward reads has_gate: taken before it goes
    experts = [m for m in model.modules() if is_fused_experts(m)]
    if not hasattr(experts[0], "has_gate"):
        pytest.skip("this transformers (5.0-5.2) sets no has_gate: every other experts test runs that layout")
    for m in experts:
        assert m.has_gate
        del m.has_gate  # an instance attribute the decorator's __init__ sets
    assert not any(hasattr(m, "has_gate") for m in experts) and all(is_fused_experts(m) for m in experts)
    assert len(unfuse_experts_(model)) == len(experts) == model.config.num_hidden_layers
    layers = model.get_submodule("model.layers.0.mlp.experts")
    assert isinstance(layers, ExpertLinears) and layers.kind == "flags" and layers.has_gate
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-5)


def test_experts_moved_while_unfused_are_stacked_anew():
    model = build("gpt_oss")
    unfuse_experts_(model)
    model.to(torch.bfloat16)  # each view becomes a tensor of its own
    fuse_experts_(model)
    experts = model.model.layers[1].mlp.experts
    assert experts.gate_up_proj.dtype == torch.bfloat16 and experts.gate_up_proj.shape == (4, 32, 2 * 64)
    assert experts.down_proj_bias.shape == (4, 32)
    with torch.no_grad():
        model(input_ids=random_ids(1, 5, seed=2))


def test_sparsified_experts_calibrate_save_load_and_unsparsify(tmp_path):
    model = build("mixtral")
    cfg = spon.SparsityConfig(sparsity=0.5)
    mods = spon.sparsify_(model, cfg)
    assert "model.layers.1.mlp.experts.down_proj.3" in mods
    spon.calibrate_(model, [random_ids(2, 64, seed=s) for s in range(4)], cfg, progress=False)
    with torch.no_grad(), spon.measure_sparsity(model) as stats:
        model(input_ids=random_ids(1, 64, seed=4))
    assert 0.4 < stats["per_layer"]["model.layers.0.mlp.experts.gate_up_proj.0"] < 0.6
    with_random_alphas(model)
    ids = random_ids(1, 10, seed=3)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    spon.save_artifact(model, tmp_path / "art", {"name": "tiny-mixtral"})
    fresh = build("mixtral")
    spon.load_artifact(fresh, tmp_path / "art")
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, ref)
    spon.unsparsify_(fresh)
    assert type(fresh.model.layers[0].mlp.experts).__name__ == "MixtralExperts"
    assert fresh.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 2 * 64, 32)


def test_an_artifact_that_does_not_fit_leaves_the_experts_fused(tmp_path):
    model = build("mixtral")
    spon.sparsify_(model, spon.SparsityConfig(sparsity=0.5))
    spon.save_artifact(model, tmp_path / "art", {"name": "tiny-mixtral"})
    other = build("qwen2_moe")
    keys = list(other.state_dict())
    with pytest.raises(spon.SponError, match="does not fit this model"):
        spon.load_artifact(other, tmp_path / "art")
    assert list(other.state_dict()) == keys


def test_experts_the_config_does_not_select_stay_fused():
    model = build("qwen2_moe")
    spon.sparsify_(model, spon.SparsityConfig(include=r"self_attn"))
    assert not [m for m in model.modules() if isinstance(m, ExpertLinears)]
    assert model.model.layers[0].mlp.experts.gate_up_proj.dim() == 3


def test_a_subclass_with_its_own_forward_around_the_dispatch_stays_fused():
    model = build("mixtral")  # as Ergo's experts: a per-route norm around the decorated projection forward

    class Wrapped(type(model.model.layers[0].mlp.experts)):
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return 2 * super().forward(hidden_states, top_k_index, top_k_weights)

    experts = model.model.layers[0].mlp.experts
    experts.__class__ = Wrapped
    assert not is_fused_experts(experts) and is_fused_experts(model.model.layers[1].mlp.experts)
    assert list(unfuse_experts_(model)) == ["model.layers.1.mlp.experts"]


def test_expert_layers_count_in_the_byte_bound_by_the_share_of_tokens_that_reach_them():
    from spon.bench.decode import byte_bound

    model = build("mixtral")  # 2 of 4 experts per token
    spon.sparsify_(model, spon.SparsityConfig(sparsity=0.5))
    with torch.no_grad(), spon.measure_sparsity(model) as stats:
        model(input_ids=random_ids(1, 256, seed=6))
    usage = stats["usage"]
    assert usage["model.layers.0.self_attn.q_proj"] == 1.0
    experts = [u for n, u in usage.items() if n.startswith("model.layers.0.mlp.experts.gate_up_proj.")]
    assert len(experts) == 4 and sum(experts) == pytest.approx(2.0)  # k experts a token
    # nothing dropped yet: per token the attention (2 x 3,072 weights a block) and two experts (2 x 6,144) are read,
    # and the 96 x 32 head; at 100% skipped only the head is left
    attention, two_experts, head = 2 * (32 * 32 + 2 * 32 * 16 + 32 * 32), 2 * 2 * (2 * 64 * 32 + 32 * 64), 96 * 32
    assert byte_bound(model, 1.0, usage) == pytest.approx((attention + two_experts + head) / head)
    assert byte_bound(model, 1.0) > byte_bound(model, 1.0, usage)  # without usage every expert would count


def test_greedy_allocation_weighs_experts_by_the_tokens_that_reach_them():
    """The block average the allocation keeps is over the weights a token reads (k of E experts): the model then runs
    at the target per token; weighing every expert in full, this tiny model ran at 44.8% for a 50% target."""
    from spon.sparsity.allocate import _usage, block_of, greedy_allocate_
    from spon.sparsity.calibrate import sample_scores

    model = build("qwen2_moe")
    cfg = spon.SparsityConfig(sparsity=0.5, allocation="greedy")
    mods = spon.sparsify_(model, cfg)
    batches = [random_ids(2, 64, seed=s) for s in range(3)]
    usage = _usage(sample_scores(model, batches, cfg, mods, progress=False), mods)
    assert usage["model.layers.0.self_attn.q_proj"] == 1.0
    assert sum(u for n, u in usage.items() if ".experts.down_proj." in n and n.startswith("model.layers.0.")) == pytest.approx(2.0)
    new = greedy_allocate_(model, batches, cfg, progress=False)
    for block in {block_of(n) for n in mods}:
        names = [n for n in mods if block_of(n) == block]
        size = {n: usage[n] * mods[n].out_features * mods[n].in_features for n in names}
        avg = sum(new.sparsity_for(n) * size[n] for n in names) / sum(size.values())
        assert abs(avg - 0.5) < 1e-3, (block, avg)
    with torch.no_grad(), spon.measure_sparsity(model) as stats:
        model(input_ids=random_ids(1, 256, seed=9))
    assert abs(stats["weighted"] - 0.5) < 0.03


def test_expert_layers_keep_a_k_over_e_share_of_the_calibration_sample_and_are_never_routers():
    from spon.sparsity.calibrate import MIN_EXPERT_SAMPLES, SAMPLES_PER_LAYER, _capacities

    torch.manual_seed(0)  # 64 experts whose gate_up has 64 outputs: the router's shape, yet experts
    model = T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**COMMON, num_experts=64, num_experts_per_tok=2, moe_intermediate_size=32,
                                                   shared_expert_intermediate_size=48)).eval()
    if not any(is_fused_experts(m) for m in model.modules()):
        pytest.skip("this transformers keeps no experts as 3-D tensors with layout flags (transformers 4)")
    mods = spon.sparsify_(model)
    assert len(mods) == 2 * (4 + 2 * 64 + 3)  # attention, every expert's two layers, the shared expert's three
    capacity = _capacities(model, mods, SAMPLES_PER_LAYER)
    assert capacity["model.layers.0.self_attn.q_proj"] == SAMPLES_PER_LAYER
    assert capacity["model.layers.1.mlp.experts.down_proj.63"] == MIN_EXPERT_SAMPLES  # 2/64 of 262,144 is 8,192
    assert set(_capacities(model, mods, 1000).values()) == {1000}
    small = build("mixtral")  # 2 of 4 experts: half the sample
    capacity = _capacities(small, spon.sparsify_(small), SAMPLES_PER_LAYER)
    assert capacity["model.layers.0.mlp.experts.gate_up_proj.1"] == SAMPLES_PER_LAYER // 2


def llama4() -> torch.nn.Module:
    """Llama 4's experts: a module without layout flags, [E * T, H] rows, every expert given every token scaled by its
    routing score (zero where the token went elsewhere); on transformers 4 and 5 alike."""
    torch.manual_seed(0)
    model = T.Llama4ForCausalLM(T.Llama4TextConfig(**COMMON, num_local_experts=4, num_experts_per_tok=1, head_dim=8,
                                                   intermediate_size_mlp=64, interleave_moe_layer_step=1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 3:
                p.normal_(0, 0.2)
    return model


def test_llama4_batched_experts_unfuse_by_probe_compute_the_same_and_fuse_back():
    model = llama4()
    assert is_fused_experts(model.model.layers[0].feed_forward.experts)  # by the probe: no flags, no class name

    def check(params, layers):
        assert isinstance(layers, ExpertLinears) and layers.batched and len(layers.gate_up_proj) == 4
        assert layers.gate_up_proj[2].weight.data_ptr() == params["gate_up_proj"][2].data_ptr()  # a view, not a copy

    unfuse_and_fuse_back(model, "model.layers.0.feed_forward.experts", check)

def test_llama4_tokens_routed_elsewhere_get_nothing_from_an_expert_even_with_folded_vectors():
    model = llama4()
    cfg = spon.SparsityConfig(sparsity=0.5)
    mods = spon.sparsify_(model, cfg)
    assert "model.layers.1.feed_forward.experts.down_proj.3" in mods
    spon.calibrate_(model, [random_ids(2, 64, seed=s) for s in range(4)], cfg, progress=False)
    with torch.no_grad(), spon.measure_sparsity(model) as stats:
        model(input_ids=random_ids(1, 64, seed=4))
    assert stats["usage"]["model.layers.0.feed_forward.experts.gate_up_proj.0"] < 1  # only its routed tokens reach it
    with_random_alphas(model)
    spon.fold_(model)  # every expert layer now has a bias W alpha: a zero row would give a non-zero output
    experts = model.model.layers[0].feed_forward.experts
    x = torch.randn(4, 3, 32)
    x[:, 1] = 0  # token 1 routed to no expert
    x[2] = 0  # expert 2 given no token
    with torch.no_grad():
        out = experts(x.reshape(-1, 32)).reshape(4, 3, 32)
        assert torch.equal(out[:, 1], torch.zeros(4, 32)) and torch.equal(out[2], torch.zeros(3, 32))
        gu, down = experts.gate_up_proj[0], experts.down_proj[0]
        gate, up = gu(x[0, [0, 2]]).chunk(2, dim=-1)
        torch.testing.assert_close(out[0, [0, 2]], down(up * experts._fused.act_fn(gate)))  # routed rows: the expert


def test_experts_without_flags_whose_forward_is_another_stay_dense():
    model = llama4()

    class Doubled(type(model.model.layers[0].feed_forward.experts)):
        def forward(self, hidden_states):
            return 2 * super().forward(hidden_states)

    for layer in model.model.layers:
        layer.feed_forward.experts.__class__ = Doubled
    assert not is_fused_experts(model.model.layers[0].feed_forward.experts)  # the probe tells it apart
    with pytest.warns(UserWarning, match="stay dense"):
        mods = spon.sparsify_(model, spon.SparsityConfig(sparsity=0.5))
    assert not any(".experts." in n for n in mods)


def test_jetmoe_split_experts_unfuse_by_probe_compute_the_same_and_fuse_back():
    """JetMoE: one 3-D `weight` per projection, rows grouped by expert and split by count, in its attention and its MLP."""
    torch.manual_seed(0)
    model = T.JetMoeForCausalLM(T.JetMoeConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_key_value_heads=2, kv_channels=8, num_local_experts=4,
                                               num_experts_per_tok=2, max_position_embeddings=256)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)

    def check(params, layers):
        # attention's and the MLP's input and output projections, in each of 2 blocks
        assert len([m for m in model.modules() if isinstance(m, ExpertLinears)]) == 8
        assert layers.kind == "split" and layers.expert[3].weight.data_ptr() == params["weight"][3].data_ptr()

    unfuse_and_fuse_back(model, "model.layers.1.mlp.input_linear", check)


def test_dbrx_row_stacked_experts_unfuse_by_probe_compute_the_same_and_fuse_back():
    """DBRX: each projection's experts stacked by rows in one 2-D tensor (w1 gate, v1 up, w2 down stored [in, out])."""
    from test_architectures import dbrx_config

    torch.manual_seed(0)
    model = T.DbrxForCausalLM(dbrx_config()).eval()
    experts = model.transformer.blocks[0].ffn.experts
    if not is_fused_experts(experts):
        pytest.skip("transformers 4's DBRX experts take another routing signature (left dense, with a notice)")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    def check(params, layers):
        assert layers.kind == "glu" and len(layers.down_proj) == 4
        down = layers.down_proj[3].weight
        assert down.shape == (32, 32) and down.data_ptr() == params["mlp.w2"][3 * 32:].data_ptr()  # expert 3's rows

    unfuse_and_fuse_back(model, "transformer.blocks.0.ffn.experts", check)

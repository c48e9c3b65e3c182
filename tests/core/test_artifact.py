import json

import pytest
import torch

import spon
from conftest import calibrated, make_model, random_ids, with_random_alphas
from spon.io.artifact import CONFIG_NAME, TENSORS_NAME

IDENTITY = {"name": "tiny", "architecture": "test"}


def test_round_trip_gives_identical_logits(arch, tmp_path):
    model, _ = calibrated(arch, tokens="last", last_fraction=0.5)
    with_random_alphas(model)
    spon.save_artifact(model, tmp_path / "a", IDENTITY)
    fresh = make_model(arch)
    meta = spon.load_artifact(fresh, tmp_path / "a")
    ids = random_ids(2, 16)
    assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)
    assert meta["sparsity"]["tokens"] == "last" and meta["has_spon"] and not meta["folded"]
    assert sorted((tmp_path / "a").iterdir()) == [tmp_path / "a" / CONFIG_NAME, tmp_path / "a" / TENSORS_NAME]


def test_round_trip_of_folded_model(tmp_path):
    model, _ = calibrated("qwen2")
    with_random_alphas(model)
    spon.fold_(model)
    spon.save_artifact(model, tmp_path / "a", IDENTITY)
    fresh = make_model("qwen2")
    assert spon.load_artifact(fresh, tmp_path / "a")["folded"]
    ids = random_ids(1, 8)
    assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


def test_artifact_for_another_model_names_the_mismatch(tmp_path):
    model, _ = calibrated("llama")
    spon.save_artifact(model, tmp_path / "a", IDENTITY)
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import COMMON

    wide = LlamaForCausalLM(LlamaConfig(**{**COMMON, "intermediate_size": 48}))
    with pytest.raises(spon.SponError, match=r"mlp\.gate_proj is 64x32 .* but 48x32"):
        spon.load_artifact(wide, tmp_path / "a")
    deeper = LlamaForCausalLM(LlamaConfig(**{**COMMON, "num_hidden_layers": 3}))
    with pytest.raises(spon.SponError, match=r"lacks \(first: model\.layers\.2\."):
        spon.load_artifact(deeper, tmp_path / "a")


def test_corrupt_and_newer_artifacts_are_refused(tmp_path):
    model, _ = calibrated("llama")
    path = spon.save_artifact(model, tmp_path / "a", IDENTITY)
    data = bytearray((path / TENSORS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (path / TENSORS_NAME).write_bytes(bytes(data))
    with pytest.raises(spon.SponError, match="checksum"):
        spon.load_artifact(make_model("llama"), path)
    path = spon.save_artifact(model, tmp_path / "b", IDENTITY)
    meta = json.loads((path / CONFIG_NAME).read_text())
    meta["version"] = 99
    (path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(spon.SponError, match="newer than this spon"):
        spon.load_artifact(make_model("llama"), path)


def test_artifact_from_other_weights_of_the_same_shapes_is_refused(tmp_path):
    model, _ = calibrated("llama")
    spon.save_artifact(model, tmp_path / "a", IDENTITY)
    other = make_model("llama", seed=1)  # same architecture and shapes, other weights (think: base vs instruct)
    with pytest.raises(spon.SponError, match="other weights: module model.layers.0.self_attn.q_proj"):
        spon.load_artifact(other, tmp_path / "a")
    assert not spon.sparse_modules(other)  # nothing was changed
    spon.load_artifact(other, tmp_path / "a", check_weights=False)  # the user who knows
    assert spon.sparse_modules(other)


def test_a_real_weight_change_is_caught_but_rounding_to_bf16_is_not(tmp_path):
    model, _ = calibrated("qwen2")
    spon.save_artifact(model, tmp_path / "a", IDENTITY)
    spon.load_artifact(make_model("qwen2").to(torch.bfloat16), tmp_path / "a")  # same weights in another dtype
    tuned = make_model("qwen2")
    with torch.no_grad():
        w = tuned.model.layers[1].mlp.down_proj.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.01 * w.pow(2).mean().sqrt())
    with pytest.raises(spon.SponError, match="module model.layers.1.mlp.down_proj"):  # a 1% fine-tune of one layer
        spon.load_artifact(tuned, tmp_path / "a")


def test_loading_onto_a_model_sparsified_with_another_rule_applies_the_artifacts_rule(tmp_path):
    model, _ = calibrated("llama")  # magnitude
    with_random_alphas(model)
    spon.save_artifact(model, tmp_path / "a", IDENTITY)
    wina, _ = calibrated("llama", rule="rsparse", selection="topk")  # rule state everywhere: top-k counts, low-rank factors
    spon.load_artifact(wina, tmp_path / "a")
    assert all(m.rule.plain and m.rule.rule == "magnitude" for m in spon.sparse_modules(wina).values())
    fresh = make_model("llama")
    spon.load_artifact(fresh, tmp_path / "a")
    ids = random_ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(wina(input_ids=ids).logits, fresh(input_ids=ids).logits)

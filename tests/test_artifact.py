import json

import pytest
import torch

import spon
from conftest import make_model, random_ids
from spon.artifact import CONFIG_NAME, TENSORS_NAME
from test_fold import with_random_alphas
from test_sparsify import calibrated

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

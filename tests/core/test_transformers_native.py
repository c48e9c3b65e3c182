"""An exported folder loads as the sparse model through transformers' own entry point (`io/modeling_spon.py`), with spon
installed and without it, and never silently as the dense model."""

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import spon
from spon.io.artifact import save_artifact
from spon.pipeline import export_model, open_model
from spon.serving.greedy import greedy_generate

from conftest import calibrated, make_model, make_tokenizer, random_ids, with_random_alphas

ARCHES = ["llama", "qwen2", "gpt2"]  # plain Linear; biased q/k/v; GPT-2's Conv1D stored [in, out]
TOL = 1e-5  # float32 logits: the same operations in the same order, so equal up to rounding (seen: exactly equal)


def exported(tmp_path, arch: str, **sparsity):
    """A tiny model of `arch`, calibrated with random SPON vectors, exported; returns the folder."""
    base, art, out = tmp_path / "base", tmp_path / "art", tmp_path / f"exported-{arch}"
    make_model(arch).save_pretrained(base)
    make_tokenizer().save_pretrained(base)
    model, _ = calibrated(arch, **sparsity)
    with_random_alphas(model)
    save_artifact(model, art, {"name": str(base)})
    return export_model(str(base), str(art), str(out))


def without_spon(monkeypatch):
    """The modelling code's `import spon...` fails, as on a machine without spon."""
    monkeypatch.setitem(sys.modules, "spon.io.artifact", None)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("installed", [True, False], ids=["spon", "plain-torch"])
def test_exported_folder_loads_sparse_in_plain_transformers(tmp_path, monkeypatch, arch, installed):
    folder = exported(tmp_path, arch)
    ids = random_ids(2, 16)
    lm, meta = open_model(str(folder))  # what `spon generate --model DIR` runs
    with torch.no_grad():
        want = lm.model(ids).logits
        with spon.dense(lm.model):
            dense = lm.model(ids).logits
    assert (want - dense).abs().max() > 1e-2  # the sparse model really differs from the dense one
    if not installed:
        without_spon(monkeypatch)
    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("SparseLinear" if installed else "SparseInputLinear") in kinds
    with torch.no_grad():
        got = model(ids).logits
    assert (got - want).abs().max() <= TOL
    prompt = random_ids(1, 5, seed=3)
    new = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert new[0, 5:].tolist() == greedy_generate(lm.model, prompt, 6, eos_token_id=None)  # spon generate's tokens


def test_loading_without_trust_remote_code_is_refused_not_dense(tmp_path):
    folder = exported(tmp_path, "llama")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "spon"
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(str(folder))


@pytest.mark.parametrize("installed", [True, False], ids=["spon", "plain-torch"])
def test_save_pretrained_writes_a_sparse_folder_again(tmp_path, monkeypatch, installed):
    folder = exported(tmp_path, "qwen2", tokens="last")  # the token mode travels too: dense prefix, sparse last half
    if not installed:
        without_spon(monkeypatch)
    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True)
    again = tmp_path / "again"
    model.save_pretrained(again)
    assert {"modeling_spon.py", "spon_config.json", "spon_vectors.safetensors"} <= {p.name for p in again.iterdir()}
    reloaded = AutoModelForCausalLM.from_pretrained(str(again), trust_remote_code=True)
    ids = random_ids(1, 12)
    lm, _ = open_model(str(folder))
    with torch.no_grad():
        assert (reloaded(ids).logits - lm.model(ids).logits).abs().max() <= TOL
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(str(again))


def test_plain_torch_path_refuses_rules_it_cannot_compute(tmp_path, monkeypatch):
    folder = exported(tmp_path, "llama", rule="rsparse")
    without_spon(monkeypatch)
    with pytest.raises(ImportError, match="install spon"):
        AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True)

"""`--weights`: calibrate, train, evaluate, generate and benchmark on quantized weights, end to end on a tiny model."""

import json

import pytest

from conftest import COMMON, make_tokenizer, needs_cc, random_text
from spon.cli.main import main

pytestmark = needs_cc


@pytest.fixture
def tiny(tmp_path):
    """A tiny Llama whose linears are whole 32-input blocks, its tokenizer, and some text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path / "m"
    LlamaForCausalLM(LlamaConfig(**{**COMMON, "hidden_size": 64, "intermediate_size": 128})).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    text = tmp_path / "t.txt"
    text.write_text(random_text(8000))
    return folder, text


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


EVAL = ["--max-tokens", "2000", "--ctx-len", "64", "--stride", "64", "--quiet"]


def test_train_evaluate_generate_on_quantized_weights(capsys, tiny, tmp_path):
    model, text = tiny
    art = tmp_path / "art"
    assert run(capsys, "train", "--model", model, "--data", text, "--out", art, "--weights", "q4_0", "--quiet",
               "--steps", "4", "--seq-len", "32", "--calib-tokens", "512")[0] == 0
    assert json.loads((art / "spon_config.json").read_text())["base_model"]["weights"] == "q4_0"
    code, out, _ = run(capsys, "eval", "--model", model, "--data", text, "--artifact", art, "--weights", "q4_0", "--json", *EVAL)
    res = json.loads(out)
    assert code == 0 and res["weights"] == "q4_0" and res["ppl_float"] != res["ppl_dense"]  # 4 bits cost something
    assert res["quantization_cost"] == pytest.approx(res["ppl_dense"] / res["ppl_float"] - 1)
    assert len(res["ci95"]["ppl_float"]) == 2
    code, _, err = run(capsys, "eval", "--model", model, "--data", text, "--artifact", art, *EVAL)  # float weights
    assert code == 2 and "--weights q4_0" in err
    gen = ["generate", "--model", model, "--artifact", art, "--prompt", "w1 w2 w3", "--max-new-tokens", "6", "--quiet"]
    code, served, _ = run(capsys, *gen, "--weights", "q4_0")
    assert code == 0 and served.strip()
    assert run(capsys, *gen, "--weights", "gguf")[0] == 2  # a folder is not a GGUF file


def test_bench_decode_on_quantized_weights(capsys, tiny, tmp_path):
    model, text = tiny
    out = tmp_path / "bench"
    code, _, _ = run(capsys, "bench", "decode", "--model", model, "--data", text, "--weights", "q8_0", "--calib-tokens",
                     "512", "--repeats", "1", "--new-tokens", "4", "--out", out, "--quiet")
    res = json.loads((out / "decode.json").read_text())
    run_ = res["runs"]["float32 q8_0"]
    assert code == 0 and set(run_["tokens_per_s"]) == {"quant_0pct", "quant_sparse+SPON"}
    assert run_["served"]["layers"] == run_["served"]["of"] and run_["served"]["types"] == ["Q8_0"]
    assert "no GGUF" in run_["llama_cpp"]["status"] or "not installed" in run_["llama_cpp"]["status"]
    assert (out / "decode.png").is_file()

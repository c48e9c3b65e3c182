import json
import math
import subprocess
import sys

import pytest

from conftest import make_model, make_tokenizer, random_text
from spon.cli.main import main

FAST = ["--quiet", "--calib-tokens", "512", "--steps", "3", "--seq-len", "32"]
EVAL = ["--ctx-len", "32"]


@pytest.fixture
def big_text(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text(random_text(20000, distinct=8))  # a narrow text, so SPON learns something that holds out
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    """Exactly one error line, last, and no traceback (progress bars may precede it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("spon: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def test_demo_writes_report_metrics_and_artifact(capsys, model_folder, big_text, tmp_path):
    out = tmp_path / "demo"
    code, stdout, _ = run(capsys, "demo", "--model", model_folder, "--data", big_text, "--out", out, *FAST, *EVAL)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["metrics"]
    assert {"ppl_dense", "ppl_sparse", "sparsity_measured", "tokens"} <= set(m)
    assert m["sparsity_measured_entries"] == pytest.approx(0.5, abs=0.1)
    assert metrics["tokens_sparsified"] == "all tokens"
    assert set(metrics["samples"]) >= {"dense", "sparse", "sparse+SPON"}
    assert (out / "artifact" / "spon_config.json").exists()
    report = (out / "report.md").read_text()
    assert "Tokens sparsified: all tokens" in report and f"{m['ppl_dense']:.3f}" in report and "# spon demo" in stdout


def test_train_match_sparsity_sets_thresholds_on_the_models_own_inputs(capsys, model_folder, big_text, tmp_path):
    import torch
    from safetensors.torch import load_file

    cal, art = tmp_path / "cal", tmp_path / "art"
    assert run(capsys, "calibrate", "--model", model_folder, "--data", big_text, "--out", cal, "--quiet", "--calib-tokens", "512",
               "--sparsity", "0.6")[0] == 0
    assert run(capsys, "train", "--model", model_folder, "--data", big_text, "--artifact", cal, "--out", art, "--quiet",
               "--steps", "6", "--seq-len", "32", "--lr", "1e-3", "--calib-tokens", "512", "--match-sparsity")[0] == 0
    meta = json.loads((art / "spon_config.json").read_text())
    assert meta["calibration"]["inputs"] == "own" and meta["has_spon"]
    before, after = load_file(cal / "spon_vectors.safetensors"), load_file(art / "spon_vectors.safetensors")
    taus = [k for k in before if k.endswith("threshold")]
    assert taus and any(not torch.equal(before[k], after[k]) for k in taus)
    code, out, _ = run(capsys, "eval", "--model", model_folder, "--data", big_text, "--artifact", art, "--json", "--quiet", *EVAL)
    assert json.loads(out)["sparsity_measured_spon"] == pytest.approx(0.6, abs=0.05)


def test_calibrate_train_eval_export_generate(capsys, model_folder, big_text, tmp_path):
    cal, art, exp = tmp_path / "cal", tmp_path / "art", tmp_path / "exported"
    assert run(capsys, "calibrate", "--model", model_folder, "--data", big_text, "--out", cal, "--sparsity", "0.6",
               "--quiet", "--calib-tokens", "512")[0] == 0
    assert run(capsys, "train", "--model", model_folder, "--data", big_text, "--artifact", cal, "--out", art,
               "--quiet", "--steps", "6", "--seq-len", "32", "--lr", "1e-3")[0] == 0
    meta = json.loads((art / "spon_config.json").read_text())
    assert meta["sparsity"]["sparsity"] == 0.6 and "training" in meta and "calibration" in meta
    code, out, _ = run(capsys, "eval", "--model", model_folder, "--data", big_text, "--artifact", art, "--json", "--quiet", *EVAL)
    res = json.loads(out)
    assert code == 0 and {"ppl_dense", "ppl_sparse", "gap_recovered", "sparsity_measured", "tokens"} <= set(res)
    assert meta["has_spon"] and res["ppl_spon"] != res["ppl_sparse"] and res["gap_recovered"] is not None
    assert run(capsys, "export", "--model", model_folder, "--artifact", art, "--out", exp, "--quiet")[0] == 0
    code, out2, _ = run(capsys, "eval", "--model", exp, "--data", big_text, "--json", "--quiet", *EVAL)
    res2 = json.loads(out2)
    assert res2["ppl_sparse"] == pytest.approx(res["ppl_sparse"], rel=1e-6)
    assert res2.get("ppl_spon") == pytest.approx(res.get("ppl_spon"), rel=1e-4)
    code, text, _ = run(capsys, "generate", "--model", exp, "--prompt", "w1 w2 w3", "--max-new-tokens", "5", "--quiet")
    code2, unfolded, _ = run(capsys, "generate", "--model", model_folder, "--artifact", art, "--prompt", "w1 w2 w3",
                             "--max-new-tokens", "5", "--quiet")
    assert code == code2 == 0 and text.strip() and text == unfolded  # the exported model generates what the artifact does
    code, _, err = run(capsys, "train", "--model", exp, "--data", big_text, "--out", tmp_path / "again", "--quiet",
                       "--steps", "2", "--seq-len", "32")
    assert code == 2 and "already folded" in one_line_error(err) and not (tmp_path / "again" / "spon_config.json").exists()


@pytest.mark.slow  # over 20 s: the full suite runs it, the fast selection does not
def test_models_with_their_own_code_need_trust_remote_code_in_every_command(capsys, custom_code_folder, big_text, tmp_path):
    cal, exp = tmp_path / "cal", tmp_path / "exported"
    code, _, err = run(capsys, "calibrate", "--model", custom_code_folder, "--data", big_text, "--out", cal, "--quiet")
    assert code == 2 and "pass --trust-remote-code" in one_line_error(err) and not (cal / "spon_config.json").exists()
    trust = ["--trust-remote-code", "--quiet"]
    assert run(capsys, "calibrate", "--model", custom_code_folder, "--data", big_text, "--out", cal, "--calib-tokens", "512", *trust)[0] == 0
    assert run(capsys, "export", "--model", custom_code_folder, "--artifact", cal, "--out", exp, *trust)[0] == 0
    assert (exp / "modeling_tiny.py").exists()  # the exported folder carries the model's code with it
    code, out, _ = run(capsys, "eval", "--model", exp, "--data", big_text, "--json", *trust, *EVAL)
    res = json.loads(out)
    assert code == 0 and res["sparsity_measured"] == pytest.approx(0.5, abs=0.1) and res["ppl_sparse"] != res["ppl_dense"]  # ran sparse
    from transformers import AutoModelForCausalLM

    from spon.sparsity.sparsify import sparse_modules

    model = AutoModelForCausalLM.from_pretrained(str(exp), trust_remote_code=True)  # through both codes: spon's, the base's
    assert type(model).__name__ == "SponTinyCustomForCausalLM" and sparse_modules(model)


def test_missing_model(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "--model", tmp_path / "nope")
    assert code == 2 and "not found" in one_line_error(err)
    # an artifact is checked before any model loads: the cheaper line comes first
    code, _, err = run(capsys, "eval", "--model", tmp_path / "nope", "--artifact", tmp_path)
    assert code == 2 and "is not a spon artifact" in one_line_error(err)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "1", "half"])
def test_sparsity_outside_range(capsys, value, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--sparsity", value, "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "sparsity" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_artifact_for_another_model(capsys, model_folder, big_text, tmp_path):
    other = tmp_path / "qwen"
    make_model("qwen2").save_pretrained(other)
    make_tokenizer().save_pretrained(other)
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import COMMON

    wide = tmp_path / "wide"
    LlamaForCausalLM(LlamaConfig(**{**COMMON, "hidden_size": 48})).save_pretrained(wide)
    make_tokenizer().save_pretrained(wide)
    art = tmp_path / "art"
    assert run(capsys, "calibrate", "--model", model_folder, "--data", big_text, "--out", art, "--quiet", "--calib-tokens", "512")[0] == 0
    code, _, err = run(capsys, "eval", "--model", wide, "--data", big_text, "--artifact", art, *EVAL)
    assert code == 2 and "does not fit this model" in one_line_error(err) and "q_proj" in err
    assert f"(--model {model_folder})" in err  # names the fix: the model the artifact was made for
    twin = tmp_path / "twin"  # same architecture and shapes, other weights
    make_model("llama", seed=1).save_pretrained(twin)
    make_tokenizer().save_pretrained(twin)
    code, _, err = run(capsys, "eval", "--model", twin, "--data", big_text, "--artifact", art, *EVAL)
    assert code == 2 and "other weights: module model.layers.0.self_attn.q_proj" in one_line_error(err)
    code, _, _ = run(capsys, "eval", "--model", twin, "--data", big_text, "--artifact", art, "--ignore-weights", "--quiet", *EVAL)
    assert code == 0


def test_text_too_short_for_a_window(capsys, model_folder, big_text, tmp_path):
    art = tmp_path / "art"
    assert run(capsys, "calibrate", "--model", model_folder, "--data", big_text, "--out", art, "--quiet", "--calib-tokens", "512")[0] == 0
    short = tmp_path / "short.txt"
    short.write_text(random_text(300))
    code, _, err = run(capsys, "eval", "--model", model_folder, "--data", short, "--artifact", art, "--ctx-len", "512")
    assert code == 2 and "fewer than one 512-token window" in one_line_error(err)


def test_unwritable_output_folder(capsys, model_folder, big_text, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "calibrate", "--model", model_folder, "--data", big_text, "--out", blocker / "art", "--quiet")
    assert code == 2 and "cannot write to output folder" in one_line_error(err)
    code, _, err = run(capsys, "demo", "--model", model_folder, "--data", big_text, "--out", blocker / "demo", *FAST)
    assert code == 2 and "cannot write" in one_line_error(err)


def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "spon.cli", "eval", "--model", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not found" in proc.stderr


def test_per_layer_override_reaches_the_artifact(capsys, model_folder, big_text, tmp_path):
    art = tmp_path / "art"
    code, _, _ = run(capsys, "calibrate", "--model", model_folder, "--data", big_text, "--out", art, "--quiet",
                     "--calib-tokens", "512", "--override", r"mlp\.down_proj=0.2")
    meta = json.loads((art / "spon_config.json").read_text())
    assert code == 0 and meta["sparsity"]["overrides"] == {r"mlp\.down_proj": 0.2}
    code, _, err = run(capsys, "calibrate", "--model", model_folder, "--out", art, "--override", "nonsense")
    assert code == 2 and "REGEX=SPARSITY" in one_line_error(err)
    code, _, err = run(capsys, "calibrate", "--model", model_folder, "--out", art, "--override", "down=1.2")
    assert code == 2 and "[0, 1)" in one_line_error(err)


def test_eval_scores_a_whole_file_and_the_dense_model_without_an_artifact(capsys, model_folder, tmp_path):
    words = 6000
    text = tmp_path / "eval.txt"
    text.write_text(random_text(words))  # the word-level tokenizer: one token per word, no BOS
    code, out, _ = run(capsys, "eval", "--model", model_folder, "--data", text, "--json", "--quiet", *EVAL)
    res = json.loads(out)
    windows = math.ceil(words / 32)  # non-overlapping windows of 32; without BOS a window's first token has no context
    assert code == 0 and res["windows"] == windows and res["tokens"] == words - windows  # the whole file, nothing else
    assert res["data"]["split"] == "whole file" and "ppl_sparse" not in res  # no artifact: the dense model alone
    lo, hi = res["ci95"]["ppl_dense"]
    assert lo <= res["ppl_dense"] <= hi
    code, out, _ = run(capsys, "eval", "--model", model_folder, "--data", text, "--split", "evaluation", "--json", "--quiet", *EVAL)
    assert code == 0 and json.loads(out)["tokens"] < words // 3 and json.loads(out)["data"]["split"] == "evaluation"


@pytest.mark.slow  # over 20 s: the full suite runs it, the fast selection does not
def test_eval_nudges_reports_the_rounding_floor_and_refuses_what_it_cannot_nudge(capsys, model_folder, big_text, tmp_path):
    cal = tmp_path / "cal"
    assert run(capsys, "calibrate", "--model", model_folder, "--data", big_text, "--out", cal, "--quiet", "--calib-tokens", "512")[0] == 0
    code, out, _ = run(capsys, "eval", "--model", model_folder, "--data", big_text, "--artifact", cal, "--nudges", "2", "--json",
                       "--quiet", *EVAL)
    res = json.loads(out)
    floor = res["rounding_floor"]
    assert code == 0 and floor["nudges"] == 2 and len(floor["draws"]) == 2 and floor["eps"] == 1e-6
    assert floor["ppl_sparse"]["min"] <= res["ppl_sparse"] <= floor["ppl_sparse"]["max"]
    assert "gap_recovered" not in floor  # thresholds only: no vectors, nothing recovered
    code, text, _ = run(capsys, "eval", "--model", model_folder, "--data", big_text, "--artifact", cal, "--nudges", "1", "--quiet", *EVAL)
    assert code == 0 and "rounding floor (every threshold nudged by 1e-06 of its value; the unnudged score and 1 nudged)" in text
    code, _, err = run(capsys, "eval", "--model", model_folder, "--data", big_text, "--nudges", "2", *EVAL)
    assert code == 2 and "pass --artifact" in one_line_error(err)
    with pytest.raises(SystemExit) as e:  # refused by the parser, before anything loads
        run(capsys, "eval", "--model", model_folder, "--data", big_text, "--artifact", cal, "--nudges", "-1", *EVAL)
    assert e.value.code == 2 and "--nudges: must be at least 0" in one_line_error(capsys.readouterr().err)

"""The experiment and benchmark commands end to end on a tiny model saved as a folder: sweep, compare, diagnose,
report, bench step / decode (each writes its JSON, Markdown and plots)."""

import json
import math

import pytest
import torch

from conftest import needs_cc, random_text
from spon.cli.main import main


def test_sweep_cli_writes_table_plots_and_artifacts(capsys, model_folder, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(random_text(20000, distinct=8))
    out = tmp_path / "sweep"
    code = main([
        "sweep", "--model", str(model_folder), "--data", str(text), "--out", str(out), "--sparsities", "0.3,0.5,0.7",
        "--quiet", "--calib-tokens", "512", "--steps", "3", "--seq-len", "32", "--ctx-len", "32", "--train-sequences", "8",
    ])
    assert code == 0
    r = json.loads((out / "sweep.json").read_text())
    assert [row["sparsity"] for row in r["rows"]] == [0.3, 0.5, 0.7]
    measured = [row["sparsity_measured"] for row in r["rows"]]
    assert measured[0] < measured[1] < measured[2] and abs(measured[1] - 0.5) < 0.05
    for name in ("perplexity.png", "gap_recovered.png", "spon_norms.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    for s in ("0.30", "0.50", "0.70"):
        assert (out / f"s{s}" / "artifact" / "spon_config.json").is_file()
    md = (out / "sweep.md").read_text()
    assert "Iso-perplexity sparsity" in md and "| 50% |" in md
    tokens = torch.tensor(r["window_tokens"], dtype=torch.float64)  # the stored windows give back each perplexity
    assert math.exp(sum(r["window_nll_dense"]) / tokens.sum()) == pytest.approx(r["ppl_dense"], rel=1e-6)
    for row in r["rows"]:
        assert math.exp(sum(row["window_nll"]["spon"]) / tokens.sum()) == pytest.approx(row["ppl_spon"], rel=1e-6)
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_folder)  # ||W alpha|| recomputed from the saved vectors
    vectors = load_file(out / "s0.50" / "artifact" / "spon_vectors.safetensors")
    want = {n: float((base.get_submodule(n).weight.float() @ vectors[f"{n}.alpha"]).norm()) for n in r["rows"][1]["spon_norms"]}
    assert r["rows"][1]["spon_norms"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert any(v > 0 for v in want.values())


def test_sweep_rejects_bad_sparsity_list(capsys, tmp_path):
    code = None
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--sparsities", "0.5,1.2", "--out", str(tmp_path / "x")])
    code = e.value.code
    assert code == 2 and "sparsity must be in [0, 1)" in capsys.readouterr().err


def test_bench_step_reports_both_timings(capsys, model_folder, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(random_text(4000, distinct=8))
    out = tmp_path / "b"
    code = main(["bench", "step", "--model", str(model_folder), "--data", str(text), "--quiet", "--calib-tokens", "256",
                 "--seq-len", "32", "--batch-size", "2", "--repeats", "2", "--out", str(out)])
    assert code == 0
    r = json.loads((out / "step.json").read_text())
    import statistics

    med = {k: statistics.median(v) for k, v in r["seconds_all"].items()}
    assert len(r["seconds_all"]["spon_step"]) == 2 and r["seconds_median"] == pytest.approx(med)
    assert r["spon_step_over_plain_fwd_bwd"] == pytest.approx(med["spon_step"] / med["plain_fwd_bwd"])
    assert r["batch"] == [2, 32]


def test_greedy_allocation_cli_writes_per_module_overrides(capsys, model_folder, tmp_path):
    import json

    from conftest import random_text
    from spon.cli.main import main

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
    from spon.cli.main import main

    text = tmp_path / "t.txt"
    text.write_text(random_text(20000, distinct=8))
    out = tmp_path / "cmp"
    assert main(["compare", "--model", str(model_folder), "--data", str(text), "--out", str(out), "--quiet", "--calib-tokens", "512",
                 "--steps", "2", "--seq-len", "32", "--ctx-len", "32", "--train-sequences", "8"]) == 0
    r = json.loads((out / "compare.json").read_text())
    assert [x["method"] for x in r["rows"]] == ["teal", "teal-greedy", "wina", "cats", "rsparse", "topk"]
    assert (out / "compare.png").is_file() and "| cats |" in (out / "compare.md").read_text()
    assert "vs_first" not in r["rows"][0] and len(r["window_tokens"]) == r["windows"]
    def final(x):  # sparse+SPON, or sparse where training kept zero vectors (no "spon" variant then)
        return x["ppl_spon"] or x["ppl_sparse"]

    for x in r["rows"][1:]:  # each method's final perplexity over teal's, recomputed from the stored windows
        v = x["vs_first"]
        assert v["method"] == "teal" and v["ci95"][0] <= v["ppl_ratio"] <= v["ci95"][1]
        assert v["ppl_ratio"] == pytest.approx(final(x) / final(r["rows"][0]), rel=1e-6)
    assert "1 (reference)" in (out / "compare.md").read_text()
    capsys.readouterr()
    assert main(["compare", "--methods", "teal,nope", "--model", str(model_folder)]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err


@needs_cc
def test_bench_decode_cli(capsys, model_folder, tmp_path):
    import json

    from conftest import random_text
    from spon.cli.main import main

    text = tmp_path / "t.txt"
    text.write_text(random_text(4000))
    out = tmp_path / "bench"
    code = main(["bench", "decode", "--model", str(model_folder), "--data", str(text), "--calib-tokens", "256", "--quiet",
                 "--new-tokens", "6", "--repeats", "1", "--dtypes", "float32", "--prompt", "w1 w2 w3", "--out", str(out)])
    assert code == 0
    r = json.loads((out / "decode.json").read_text())
    run = r["runs"]["float32"]
    assert run["backend"] == "cpu" and set(run["tokens_per_s"]) == {"dense", "dense_kernel_0pct", "sparse", "sparse+SPON", "masked_dense"}
    assert run["kernel_vs_masked_dense"]["identical"] and (out / "decode.png").is_file()
    measured = run["sparsity_measured"]  # calibrated at 50%, no vectors: both rows skip the same columns
    assert 0.3 < measured["sparse"] < 0.7 and measured["sparse+SPON"] == measured["sparse"]
    assert isinstance(run["anon_huge_page_bytes"], int)
    assert run["llama_cpp"]["status"].startswith(("not installed", "no GGUF of these weights"))  # a folder: no GGUF
    code = main(["bench", "decode", "--model", str(model_folder), "--llama-gguf", "m.gguf", "--dtypes", "float32,bfloat16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("spon: error: --llama-gguf holds one precision")


def test_diagnose_cli(capsys, model_folder, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(random_text(20000, distinct=8))
    art = tmp_path / "art"
    assert main(["train", "--model", str(model_folder), "--data", str(text), "--out", str(art), "--quiet",
                 "--calib-tokens", "512", "--steps", "3", "--seq-len", "32", "--train-sequences", "8"]) == 0
    out = tmp_path / "diag"
    assert main(["diagnose", "--model", str(model_folder), "--data", str(text), "--artifact", str(art), "--seq-len", "64",
                 "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "diagnose.json").read_text())
    assert set(r["anchors"]["by_sparsity"]) == {"0.25", "0.5", "0.7"} and len(r["anchors"]["lengths"]) == 64
    assert "sparse" in r["drift"] and (out / "drift.png").is_file() and (out / "always_active.png").is_file()


@pytest.mark.slow  # over 20 s: the full suite runs it, the fast selection does not
def test_report_gathers_eval_sweep_and_diagnose(capsys, model_folder, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(random_text(20000, distinct=8))
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--model", str(model_folder), "--data", str(text), "--out", str(sweep), "--sparsities", "0.3,0.6",
                 "--quiet", "--calib-tokens", "512", "--steps", "2", "--seq-len", "32", "--ctx-len", "32", "--train-sequences", "8"]) == 0
    art = sweep / "s0.60" / "artifact"
    ev = tmp_path / "ev"
    assert main(["eval", "--model", str(model_folder), "--data", str(text), "--artifact", str(art), "--ctx-len", "32",
                 "--out", str(ev), "--quiet", "--nudges", "1"]) == 0
    diag = tmp_path / "diag"
    assert main(["diagnose", "--model", str(model_folder), "--data", str(text), "--artifact", str(art), "--seq-len", "32",
                 "--out", str(diag), "--quiet"]) == 0
    out = tmp_path / "report"
    assert main(["report", str(sweep), str(ev), str(diag), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for heading in ("## Sparsity sweep (sweep)", "## Evaluation (ev)", "## Diagnostics (diag)"):
        assert heading in md
    assert "![perplexity](sweep-perplexity.png)" in md and (out / "diag-drift.png").is_file()
    assert md.count("Machine: ") == 3 and "tokens sparsified: all tokens" in md
    assert "rounding floor (every threshold nudged by 1e-06 of its value; the unnudged score and 1 nudged): sparse " in md
    capsys.readouterr()
    assert main(["report", str(tmp_path / "t.txt")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_sweep_with_several_seeds_reports_their_spread(capsys, model_folder, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(random_text(20000, distinct=8))
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", str(model_folder), "--data", str(text), "--out", str(out), "--sparsities", "0.6",
                 "--seeds", "0,1", "--quiet", "--calib-tokens", "512", "--steps", "3", "--seq-len", "32", "--ctx-len", "32",
                 "--train-sequences", "8"]) == 0
    r = json.loads((out / "sweep.json").read_text())
    assert [row["seed"] for row in r["rows"]] == [0] and [row["seed"] for row in r["seed_rows"]] == [1]
    both = [r["rows"][0]["ppl_spon"], r["seed_rows"][0]["ppl_spon"]]
    assert both[0] != both[1]  # the seed changes the training order, so the vectors
    assert r["seed_spread"]["0.60"]["ppl_spon"]["min"] == min(both) and "Seed spread" in (out / "sweep.md").read_text()
    assert (out / "s0.60-seed1" / "artifact" / "spon_config.json").is_file()
    assert main(["sweep", "--seeds", "0,x", "--out", str(tmp_path / "bad")]) == 2


@needs_cc
@pytest.mark.slow
def test_bench_decode_compiled_rows(capsys, model_folder, tmp_path, monkeypatch):
    import spon.serving.decode_head as dh

    timed = []  # the head's timed choice, made once: the compiled copy takes the eager copy's path
    monkeypatch.setattr(dh.DecodeHead, "choose_path", lambda self: (timed.append(1), "kernel" if len(timed) == 1 else "torch")[1])
    text = tmp_path / "t.txt"
    text.write_text(random_text(4000))
    out = tmp_path / "bench"
    code = main(["bench", "decode", "--model", str(model_folder), "--data", str(text), "--calib-tokens", "256", "--quiet",
                 "--new-tokens", "6", "--repeats", "1", "--dtypes", "float32", "--prompt", "w1 w2 w3", "--compile", "--out", str(out)])
    assert code == 0
    run = json.loads((out / "decode.json").read_text())["runs"]["float32"]
    compiled = {"dense_compiled", "kernel_0pct_compiled", "sparse_compiled", "sparse+SPON_compiled"}
    assert compiled <= set(run["tokens_per_s"]) and set(run["compile_seconds"]) == compiled
    assert run["compiled_vs_eager"]["dense_compiled"]["identical"]  # HF's own model, compiled: the same greedy tokens
    assert run["compiled_vs_eager"]["sparse+SPON_compiled"]["identical"]
    assert run["speedup_vs_dense_compiled"]["dense_compiled"] == 1.0
    paired = run["per_round"]["vs_dense_compiled"]  # one round here: its ratio is the rates' ratio
    assert paired["dense_compiled"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert paired["sparse+SPON_compiled"]["median"] == pytest.approx(run["speedup_vs_dense_compiled"]["sparse+SPON_compiled"])
    assert run["guards"].startswith("differentiating") and all(run["same_tokens_every_round"].values())
    assert run["head"] == "kernel" and len(timed) == 1
    assert run["attention"] == {"eager": "sdpa", "compiled": "eager"}  # compile_decode_'s CPU choice, dense and ours alike
    assert run["head_on_huge_pages"] is False  # a tiny head, under one 2 MB page: left where it was


def test_llama_cpp_row_says_why_it_is_missing_and_times_the_stream(monkeypatch, tmp_path):
    import sys
    import types

    import torch

    from spon.bench.llama_cpp import LlamaCpp, open_llama_cpp, requantised_gguf
    from spon.errors import SponError

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # not installed
    assert open_llama_cpp("smollm2", "float32").startswith("not installed: pip install llama-cpp-python")
    clock = iter(float(t) for t in range(1000))
    calls = []

    class Params:
        ftype = allow_requantize = pure = None

    def quantize(src, dst, params):  # llama.cpp's quantiser, standing in: writes the file, or fails
        calls.append((src, params.ftype, params.allow_requantize, params.pure))
        if b"bad" in src:
            return 1
        open(dst, "wb").write(b"GGUF" + src)
        return 0

    class Llama:  # each generated token one second after the last
        def __init__(self, **kw):
            self.kw = kw

        def generate(self, ids, **kw):
            assert kw["top_k"] == 1 and kw["temp"] == 0.0 and ids == [5, 6, 7]
            return iter(range(100, 200))

    stand_in = types.SimpleNamespace(Llama=Llama, llama_model_quantize=quantize,
                                     llama_model_quantize_default_params=Params)
    monkeypatch.setitem(sys.modules, "llama_cpp", stand_in)
    monkeypatch.setenv("SPON_CACHE", str(tmp_path / "cache"))
    assert open_llama_cpp(str(tmp_path), "float32").startswith("no GGUF of these weights")
    src = tmp_path / "m.gguf"
    src.write_bytes(b"weights")
    out = requantised_gguf(src, "bfloat16", stand_in)
    assert out.read_bytes() == b"GGUF" + str(src).encode() and calls == [(str(src).encode(), 32, True, True)]
    assert requantised_gguf(src, "bfloat16", stand_in) == out and len(calls) == 1  # cached: requantised once
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"x")
    with pytest.raises(SponError, match="could not requantise"):
        requantised_gguf(bad, "float32", stand_in)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # nothing half-written left behind
    llama = open_llama_cpp(str(src), "float32", threads=2)
    assert isinstance(llama, LlamaCpp) and llama.llm.kw["n_threads"] == 2
    monkeypatch.setattr("spon.bench.llama_cpp.time.perf_counter", lambda: next(clock))
    tokens, prefill, decode = llama.decode(torch.tensor([[5, 6, 7]]), 8)
    assert tokens == list(range(100, 108)) and prefill == 1.0 and decode == 7.0  # 7 steps after the first token


def test_gpu_checks_script_says_it_needs_a_gpu():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "scripts" / "gpu_checks.py"
    proc = subprocess.run([sys.executable, str(script), "--out", "unused"], capture_output=True, text=True,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "gpu_checks: no CUDA device here; run this on a GPU machine"


def test_report_renders_a_decode_run_with_llama_cpp_measured(tmp_path):
    run = {"tokens_per_s": {"dense": 10.0, "sparse+SPON": 15.0, "llama_cpp": 12.5},
           "speedup_vs_dense": {"dense": 1.0, "sparse+SPON": 1.5, "llama_cpp": 1.25},
           "llama_cpp": {"status": "measured", "gguf": "m.gguf", "threads": 2}, "byte_bound": {"sparse+SPON": 1.625}}
    res = tmp_path / "bench"
    res.mkdir()
    (res / "decode.json").write_text(json.dumps({"model": {"name": "m"}, "sparsity": 0.5, "runs": {"float32": run}}))
    assert main(["report", str(res), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| float32 | llama_cpp | 12.5 | 1.25x |" in text and "| 1.62x |" in text


def test_llama_bench_row_runs_the_binary_and_requantises_once(tmp_path, monkeypatch):
    """--llama-bench: llama.cpp's own binaries, standing in as scripts: the rate comes from llama-bench's JSON, and
    llama-quantize makes a requantised copy once."""
    import torch

    from spon.bench.llama_cpp import LlamaBench, open_llama_bench

    monkeypatch.setenv("SPON_CACHE", str(tmp_path / "cache"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "quantize.log"
    (bin_dir / "llama-bench").write_text('#!/bin/sh\necho \'[{"n_gen": 64, "avg_ts": 126.0}]\'\n')
    (bin_dir / "llama-quantize").write_text(f'#!/bin/sh\necho "$@" >> {log}\ncp "$3" "$4"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF weights")
    assert open_llama_bench(str(tmp_path / "nope"), str(src), "gguf").startswith("no llama-bench at")
    assert open_llama_bench(str(bin_dir / "llama-bench"), str(tmp_path), "gguf").startswith("no GGUF of these weights")
    same = open_llama_bench(str(bin_dir / "llama-bench"), str(src), "gguf", threads=2)
    assert isinstance(same, LlamaBench) and same.gguf == src  # the file as it is
    tokens, _, seconds = same.decode(torch.tensor([[1, 2]]), 64)
    assert tokens == [] and seconds == pytest.approx(63 / 126.0)
    q8 = open_llama_bench(str(bin_dir / "llama-bench"), str(src), "q8_0")
    assert q8.gguf != src and q8.gguf.read_bytes() == src.read_bytes()
    assert open_llama_bench(str(bin_dir / "llama-bench"), str(src), "q8_0").gguf == q8.gguf
    runs = log.read_text().splitlines()
    assert len(runs) == 1  # requantised once
    args = runs[0].split()
    assert args[:3] == ["--allow-requantize", "--pure", str(src)] and args[-1] == "Q8_0"

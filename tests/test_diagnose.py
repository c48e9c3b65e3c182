import json

import pytest
import torch

import spon
from conftest import make_model, random_ids, random_text
from spon.cli import main
from spon.diagnose import always_active_fraction, anchor_curves, hidden_drift


def test_always_active_fraction_by_hand():
    active = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)
    # n=1: channels 0,1,3 -> 3/4; n=2: 0,3 -> 2/4; n=3: 0 -> 1/4
    assert always_active_fraction(active).tolist() == [0.75, 0.5, 0.25]
    assert always_active_fraction(torch.ones(5, 3, dtype=torch.bool)).tolist() == [1.0] * 5


def test_drift_is_zero_without_sparsity_and_spon_changes_it():
    model = make_model("llama")
    cfg = spon.SparsityConfig(sparsity=0.6)
    spon.sparsify_(model, cfg)
    ids = random_ids(2, 32)
    d0 = hidden_drift(model, ids)  # thresholds not calibrated yet: nothing dropped
    assert d0["sparse"]["mean_rel_l2"] == 0 and d0["sparse"]["kl_final"] == pytest.approx(0, abs=1e-6)
    spon.calibrate_(model, [ids], cfg, progress=False)
    d1 = hidden_drift(model, ids)
    assert d1["sparse"]["mean_rel_l2"] > 0 and d1["sparse"]["rel_l2"][0] == 0  # embeddings are untouched
    assert "sparse+SPON" not in d1
    for m in spon.sparse_modules(model).values():
        m.alpha.fill_(0.01)
    d2 = hidden_drift(model, ids)
    assert d2["sparse"] == d1["sparse"] and d2["sparse+SPON"]["mean_rel_l2"] != d1["sparse"]["mean_rel_l2"]


def test_anchor_curves_fall_with_length_and_sparsity():
    model = make_model("llama")
    spon.sparsify_(model)
    curves = anchor_curves(model, random_ids(2, 64), [0.25, 0.5, 0.75])["by_sparsity"]
    for c in curves.values():
        assert all(a >= b for a, b in zip(c, c[1:]))  # never rises with length
    assert curves["0.25"][-1] >= curves["0.5"][-1] >= curves["0.75"][-1]
    assert 0 < curves["0.75"][0] < curves["0.25"][0] <= 1


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


def test_report_gathers_eval_sweep_and_diagnose(capsys, model_folder, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(random_text(20000, distinct=8))
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--model", str(model_folder), "--data", str(text), "--out", str(sweep), "--sparsities", "0.3,0.6",
                 "--quiet", "--calib-tokens", "512", "--steps", "2", "--seq-len", "32", "--ctx-len", "32", "--train-sequences", "8"]) == 0
    art = sweep / "s0.60" / "artifact"
    ev = tmp_path / "ev"
    assert main(["eval", "--model", str(model_folder), "--data", str(text), "--artifact", str(art), "--ctx-len", "32",
                 "--out", str(ev), "--quiet"]) == 0
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
    capsys.readouterr()
    assert main(["report", str(tmp_path / "t.txt")]) == 2
    assert "is not a folder" in capsys.readouterr().err

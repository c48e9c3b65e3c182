"""The README's quickstart runs as written, on a tiny random model in place of the hub model it names, and gives what
the command line gives for the same settings."""

import re
from pathlib import Path

import torch

import spon
from spon.io.models import LoadedModel
from spon.pipeline import calibrate_model
from conftest import make_model, make_tokenizer, random_text

README = Path(__file__).resolve().parents[2] / "README.md"


def _quickstart() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example, the quickstart"
    return blocks[0]


def _tiny(monkeypatch, tmp_path):
    text = random_text(12_000, seed=3)
    splits = spon.TextSplits(text, random_text(4_000, seed=4), random_text(1_000, seed=5), {"kind": "test"})
    tok = make_tokenizer()
    loaded = []

    def load_model(spec, *a, **kw):
        lm = LoadedModel(make_model("llama"), tok, {"name": spec, "model_type": "llama"})
        loaded.append(lm)
        return lm

    monkeypatch.setattr(spon, "load_model", load_model)
    monkeypatch.setattr(spon, "load_splits", lambda spec="pydoc": splits)
    monkeypatch.chdir(tmp_path)
    return loaded, splits


def test_readme_quickstart_runs_and_equals_the_cli_calibration(monkeypatch, tmp_path):
    code = _quickstart().replace("spon.TrainConfig()", "spon.TrainConfig(steps=2, eval_every=1)")
    loaded, splits = _tiny(monkeypatch, tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "quickstart"})
    (lm,) = loaded
    assert (tmp_path / "my_artifact" / "spon_config.json").exists()
    mods = spon.sparse_modules(lm.model)
    assert mods and all(float(m.threshold) > 0 for m in mods.values())
    # the CLI's calibration step (`spon calibrate`) on the same model and text sets the same thresholds
    other = LoadedModel(make_model("llama"), lm.tokenizer, lm.identity)
    calibrate_model(other, splits, spon.SparsityConfig(sparsity=0.5), progress=False)
    theirs = spon.sparse_modules(other.model)
    for name, mod in mods.items():
        torch.testing.assert_close(mod.threshold, theirs[name].threshold)

"""Every bad input gives one clear `spon: error:` line, exit code 2, and leaves no partial file behind."""

import errno
import json

import pytest

from conftest import COMMON, make_tokenizer, random_text
from spon.cli.main import main

FAST = ["--quiet", "--calib-tokens", "512", "--steps", "2", "--seq-len", "32"]


def fails(capsys, args, *, usage=False):
    """Run the CLI, expect exit 2 and exactly one error line (no traceback); return it."""
    if usage:
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        code = e.value.code
    else:
        code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("spon: error: ")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def no_files(folder):
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(random_text(8000, distinct=8))
    return path


@pytest.fixture
def artifact(model_folder, text, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["calibrate", "--model", str(model_folder), "--data", str(text), "--out", str(out), "--quiet", "--calib-tokens", "512"]) == 0
    capsys.readouterr()
    return out


def test_unreadable_model(capsys, tmp_path, text):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{ not json")
    msg = fails(capsys, ["calibrate", "--model", bad, "--data", text, "--out", tmp_path / "o", "--quiet"])
    assert "bad" in msg
    assert no_files(tmp_path / "o")


def test_model_without_decoder_linears(capsys, tmp_path, text):
    from transformers import LlamaConfig, LlamaForCausalLM

    empty = tmp_path / "no-layers"
    LlamaForCausalLM(LlamaConfig(**{**COMMON, "num_hidden_layers": 0})).save_pretrained(empty)
    make_tokenizer().save_pretrained(empty)
    msg = fails(capsys, ["calibrate", "--model", empty, "--data", text, "--out", tmp_path / "o", "--quiet"])
    assert "no sparsifiable linears" in msg
    assert no_files(tmp_path / "o")


@pytest.mark.parametrize("args, needle", [
    (["calibrate", "--out", "x", "--bogus", "1"], "unrecognized arguments"),
    (["calibrate", "--out", "x", "--tokens", "some"], "invalid choice"),
    (["train", "--out", "x", "--init", "magic"], "invalid choice"),
    (["train", "--out", "x", "--spon-on", "heads"], "invalid choice"),
    (["sweep", "--sparsities", ""], "at least one sparsity"),
    (["frobnicate"], "invalid choice"),
])
def test_unknown_option_or_choice(capsys, args, needle):
    assert needle in fails(capsys, args, usage=True)


def test_empty_text(capsys, model_folder, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    msg = fails(capsys, ["calibrate", "--model", model_folder, "--data", empty, "--out", tmp_path / "o", "--quiet"])
    assert "no text found" in msg and no_files(tmp_path / "o")


def test_text_too_short_to_train(capsys, model_folder, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(random_text(200))
    msg = fails(capsys, ["train", "--model", model_folder, "--data", short, "--out", tmp_path / "o", *FAST])
    assert ("fewer than one" in msg or "too little text" in msg) and no_files(tmp_path / "o")


def test_dataset_not_reachable(capsys, model_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = fails(capsys, ["calibrate", "--model", model_folder, "--data", "wikitext2", "--out", tmp_path / "o", "--quiet"])
    assert "'pydoc'" in msg and no_files(tmp_path / "o")


def test_artifact_from_a_newer_version(capsys, model_folder, text, artifact):
    cfg = artifact / "spon_config.json"
    meta = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**meta, "version": 99}))
    assert "newer than this spon" in fails(capsys, ["eval", "--model", model_folder, "--data", text, "--artifact", artifact])


def test_corrupt_safetensors(capsys, model_folder, text, artifact):
    ten = artifact / "spon_vectors.safetensors"
    data = bytearray(ten.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ten.write_bytes(bytes(data))
    assert "corrupt" in fails(capsys, ["eval", "--model", model_folder, "--data", text, "--artifact", artifact])


def test_truncated_safetensors_without_checksum(capsys, model_folder, text, artifact):
    cfg = artifact / "spon_config.json"
    meta = json.loads(cfg.read_text())
    del meta["checksum_sha256"]
    cfg.write_text(json.dumps(meta))
    ten = artifact / "spon_vectors.safetensors"
    ten.write_bytes(ten.read_bytes()[:100])
    assert "corrupt" in fails(capsys, ["eval", "--model", model_folder, "--data", text, "--artifact", artifact])


def test_out_of_disk(capsys, model_folder, text, tmp_path, monkeypatch):
    import spon.io.artifact

    def full_disk(tensors, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spon.io.artifact, "save_file", full_disk)
    out = tmp_path / "o"
    msg = fails(capsys, ["calibrate", "--model", model_folder, "--data", text, "--out", out, "--quiet", "--calib-tokens", "512"])
    assert "out of disk space" in msg
    assert no_files(out)  # neither the partial tensors nor a config

"""Every bad input gives one clear `spon: error:` line, exit code 2, and leaves no partial file behind; a command never
deletes or replaces what it did not write, and what it writes takes the process umask."""

import errno
import json
import os
import stat

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
    (["eval", "--max-tokens", "-5"], "--max-tokens: must be at least 1"),
    (["generate", "--max-new-tokens", "-3", "--prompt", "w1"], "--max-new-tokens: must be at least 1"),
    (["eval", "--tasks", ""], "--tasks: must not be empty"),
    (["train", "--seq-len", "1", "--out", "x"], "--seq-len: must be at least 2"),
    (["eval", "--eval-batch-size", "0"], "--eval-batch-size: must be at least 1"),
    (["generate", "--dense", "--prompt", ""], "--prompt: must not be empty"),
    (["calibrate", "--calib-tokens", "0", "--out", "x"], "--calib-tokens: must be at least 1"),
    (["eval", "--ctx-len", "0"], "--ctx-len: must be at least 2"),
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


def snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_export_never_replaces_a_folder_it_did_not_write(capsys, model_folder, artifact, tmp_path):
    keep = tmp_path / "keep"
    (keep / "sub").mkdir(parents=True)
    (keep / "notes.txt").write_text("mine")
    before = snapshot(keep)
    msg = fails(capsys, ["export", "--model", model_folder, "--artifact", artifact, "--out", keep, "--quiet"])
    assert "not a spon exported model folder" in msg
    assert snapshot(keep) == before and (keep / "notes.txt").read_text() == "mine"


def test_an_earlier_export_is_replaced_only_with_overwrite(capsys, model_folder, artifact, tmp_path):
    export = ["export", "--model", model_folder, "--artifact", artifact, "--out", tmp_path / "exp", "--quiet"]
    assert main([str(a) for a in export]) == 0
    assert "--overwrite" in fails(capsys, export)
    assert main([str(a) for a in export] + ["--overwrite"]) == 0


def test_outputs_take_the_process_umask(model_folder, text, tmp_path):
    cal, exp = tmp_path / "cal", tmp_path / "exp"
    old = os.umask(0o022)
    try:
        assert main(["calibrate", "--model", str(model_folder), "--data", str(text), "--out", str(cal), "--quiet",
                     "--calib-tokens", "256"]) == 0
        assert main(["export", "--model", str(model_folder), "--artifact", str(cal), "--out", str(exp), "--quiet"]) == 0
    finally:
        os.umask(old)
    for path in [cal / "spon_config.json", cal / "spon_vectors.safetensors", exp / "spon_config.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(exp.stat().st_mode) == 0o755


@pytest.mark.parametrize("args", [
    ["calibrate", "--data", "/nonexistent/text"],
    ["calibrate", "--model", "nope/../missing-model"],
    ["train", "--artifact", "missing-artifact"],
])
def test_a_failed_command_leaves_no_output_folder(capsys, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    fails(capsys, [*args, "--out", tmp_path / "new" / "out", "--quiet"])
    assert not (tmp_path / "new").exists()


def test_report_of_nothing_creates_no_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["report", "nope"])
    assert list(tmp_path.iterdir()) == []


def test_model_inputs_get_one_clear_line(capsys, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(os.urandom(100))
    short = tmp_path / "short.txt"
    short.write_text("hi")
    for model, says in [(fake, "is not a GGUF file"), (short, "is a file but not a .gguf file"),
                        ("gemma3", "did you mean gemma3-270m?")]:
        assert says in fails(capsys, ["eval", "--model", model, "--quiet"])
    assert "not found" in fails(capsys, ["eval", "--artifact", tmp_path / "missing", "--quiet"])


def test_a_hub_id_without_a_hub_fails_at_once_and_says_how_to_work_offline(capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert "HF_HUB_OFFLINE=1" in fails(capsys, ["eval", "--model", "someone/some-model", "--quiet"])


def test_model_defaults_to_the_artifacts_base_model(capsys, model_folder, artifact, text):
    code = main(["eval", "--artifact", str(artifact), "--data", str(text), "--json", "--quiet", "--max-tokens", "200",
                 "--ctx-len", "64"])
    assert code == 0 and json.loads(capsys.readouterr().out)["model"]["name"] == str(model_folder)
    # an exported folder is its own base model
    exp = model_folder.parent / "exp"
    assert main(["export", "--model", str(model_folder), "--artifact", str(artifact), "--out", str(exp), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--artifact", str(exp), "--data", str(text), "--json", "--quiet", "--max-tokens", "200",
                 "--ctx-len", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == str(exp)


@pytest.mark.parametrize("args, needle", [
    (["--temperature", "-1"], "--temperature -1.0: give 0 (greedy) or a positive temperature"),
    (["--temperature", "0.7", "--top-p", "0"], "--top-p 0.0: give a probability in (0, 1]"),
    (["--top-k", "-2"], "--top-k: must be at least 0"),
    (["--chat"], "has no chat template; drop --chat"),
])
def test_bad_sampling_or_chat(capsys, model_folder, args, needle):
    assert needle in fails(capsys, ["generate", "--model", model_folder, "--dense", "--prompt", "w1", *args],
                           usage=args[0] == "--top-k")


def test_sampled_generation_repeats_with_its_seed(capsys, model_folder):
    def gen(*extra):
        assert main([str(a) for a in ["generate", "--model", model_folder, "--dense", "--prompt", "w1 w2", "--quiet",
                                      "--max-new-tokens", "12", *extra]]) == 0
        return capsys.readouterr().out

    greedy, hot = gen(), ["--temperature", "3"]
    assert gen(*hot, "--seed", "5") == gen(*hot, "--seed", "5") != gen(*hot, "--seed", "6")
    assert gen(*hot, "--seed", "5") != greedy and gen("--top-k", "3") == greedy  # top-k alone leaves greedy greedy

"""Nothing lost, nothing half-written, bad input caught before the work: each reproduction gives one `spon: error:`
line and exit code 2 (or the right behaviour), and leaves the file system as it was."""

import json
import os
import stat

import pytest

from spon.cli.main import main
from conftest import random_text

pytestmark = pytest.mark.cli


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("spon: error: "), err
    return lines[0]


def snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(random_text(4000, distinct=8))
    return path


@pytest.fixture
def artifact(capsys, model_folder, text, tmp_path):
    cal = tmp_path / "cal"
    assert run(capsys, "calibrate", "--model", model_folder, "--data", text, "--out", cal, "--quiet",
               "--calib-tokens", "256")[0] == 0
    return cal


def test_export_never_replaces_a_folder_it_did_not_write(capsys, model_folder, artifact, tmp_path):
    keep = tmp_path / "keep"
    (keep / "sub").mkdir(parents=True)
    (keep / "notes.txt").write_text("mine")
    before = snapshot(keep)
    code, _, err = run(capsys, "export", "--model", model_folder, "--artifact", artifact, "--out", keep, "--quiet")
    assert code == 2 and "not a spon exported model folder" in one_error(err)
    assert snapshot(keep) == before and (keep / "notes.txt").read_text() == "mine"


def test_an_earlier_export_is_replaced_only_with_overwrite(capsys, model_folder, artifact, tmp_path):
    exp = tmp_path / "exp"
    assert run(capsys, "export", "--model", model_folder, "--artifact", artifact, "--out", exp, "--quiet")[0] == 0
    code, _, err = run(capsys, "export", "--model", model_folder, "--artifact", artifact, "--out", exp, "--quiet")
    assert code == 2 and "--overwrite" in one_error(err)
    assert run(capsys, "export", "--model", model_folder, "--artifact", artifact, "--out", exp, "--quiet",
               "--overwrite")[0] == 0


def test_outputs_take_the_process_umask(capsys, model_folder, text, tmp_path):
    old = os.umask(0o022)
    try:
        cal = tmp_path / "cal"
        assert run(capsys, "calibrate", "--model", model_folder, "--data", text, "--out", cal, "--quiet",
                   "--calib-tokens", "256")[0] == 0
        exp = tmp_path / "exp"
        assert run(capsys, "export", "--model", model_folder, "--artifact", cal, "--out", exp, "--quiet")[0] == 0
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
def test_a_failed_command_leaves_no_output_folder(capsys, model_folder, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    args = [a if a != "MODEL" else model_folder for a in args]
    code, _, err = run(capsys, *args, "--out", tmp_path / "new" / "out", "--quiet")
    assert code == 2 and one_error(err)
    assert not (tmp_path / "new").exists()


def test_report_of_nothing_creates_no_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "report", "nope")
    assert code == 2 and one_error(err) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, says", [
    (["eval", "--max-tokens", "-5"], "--max-tokens: must be at least 1"),
    (["generate", "--max-new-tokens", "-3", "--prompt", "w1"], "--max-new-tokens: must be at least 1"),
    (["eval", "--tasks", ""], "--tasks: must not be empty"),
    (["train", "--seq-len", "1", "--out", "x"], "--seq-len: must be at least 2"),
    (["eval", "--eval-batch-size", "0"], "--eval-batch-size: must be at least 1"),
    (["generate", "--dense", "--prompt", ""], "--prompt: must not be empty"),
    (["calibrate", "--calib-tokens", "0", "--out", "x"], "--calib-tokens: must be at least 1"),
    (["eval", "--ctx-len", "0"], "--ctx-len: must be at least 2"),
])
def test_bad_values_are_refused_by_the_parser(capsys, args, says):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and says in one_error(capsys.readouterr().err)


def test_model_inputs_get_one_clear_line(capsys, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(os.urandom(100))
    short = tmp_path / "short.txt"
    short.write_text("hi")
    for model, says in [(fake, "is not a GGUF file"), (short, "is a file but not a .gguf file"),
                        ("gemma3", "did you mean gemma3-270m?")]:
        code, _, err = run(capsys, "eval", "--model", model, "--quiet")
        assert code == 2 and says in one_error(err)
    code, _, err = run(capsys, "eval", "--artifact", tmp_path / "missing", "--quiet")
    assert code == 2 and "not found" in one_error(err)


def test_a_hub_id_without_a_hub_fails_at_once_and_says_how_to_work_offline(capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    code, _, err = run(capsys, "eval", "--model", "someone/some-model", "--quiet")
    assert code == 2 and "HF_HUB_OFFLINE=1" in one_error(err)


def test_model_defaults_to_the_artifacts_base_model(capsys, model_folder, artifact, text):
    code, out, _ = run(capsys, "eval", "--artifact", artifact, "--data", text, "--json", "--quiet", "--max-tokens", "200",
                       "--ctx-len", "64")
    assert code == 0 and json.loads(out)["model"]["name"] == str(model_folder)

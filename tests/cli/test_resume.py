"""Nothing lost: kill -9 mid-training, resume, same vectors; same seed, same bits; 2 gloo processes = 1 process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_model, random_ids, random_text
from spon import SparsityConfig, TrainConfig, calibrate_, sparse_modules, sparsify_, train_spon_
from spon.cli.main import main

pytestmark = pytest.mark.slow

TRAIN = ["--quiet", "--calib-tokens", "1024", "--seq-len", "32", "--batch-size", "4", "--train-sequences", "16",
         "--steps", "12", "--lr", "1e-3"]
KILL = textwrap.dedent("""
    import os, signal, sys
    import spon.pipeline as P
    from spon.cli.main import main
    train = P.train_spon_
    def killed_at_7(*args, **kw):
        kw["on_step"] = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == 7 else None
        return train(*args, **kw)
    P.train_spon_ = killed_at_7
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def narrow_text(tmp_path):
    path = tmp_path / "narrow.txt"
    path.write_text(random_text(20000, distinct=8))
    return path


def _env():
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _vectors(folder):
    return {k: v for k, v in load_file(str(Path(folder) / "spon_vectors.safetensors")).items()}


def test_kill_9_then_resume_gives_the_uninterrupted_vectors(model_folder, narrow_text, tmp_path, capsys):
    args = ["train", "--model", str(model_folder), "--data", str(narrow_text), *TRAIN, "--checkpoint-every", "3"]
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL, *args, "--out", str(killed)], env=_env(), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "checkpoint.pt").is_file()  # the step-6 checkpoint survived the kill
    assert not (killed / "spon_vectors.safetensors").exists()  # and no half artifact
    assert torch.load(killed / "checkpoint.pt", weights_only=False)["step"] == 6

    assert main([*args, "--out", str(killed), "--resume"]) == 0
    assert not (killed / "checkpoint.pt").exists()
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    resumed, whole = _vectors(killed), _vectors(tmp_path / "whole")
    assert resumed.keys() == whole.keys()
    assert any(bool(v.any()) for k, v in whole.items() if k.endswith(".alpha"))
    for k in whole:
        assert torch.equal(resumed[k], whole[k]), k


def test_resume_without_checkpoint_is_a_clear_error(model_folder, narrow_text, tmp_path, capsys):
    code = main(["train", "--model", str(model_folder), "--data", str(narrow_text), *TRAIN, "--out", str(tmp_path / "o"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err and "Traceback" not in err


def test_resume_with_other_options_is_refused(model_folder, narrow_text, tmp_path, capsys):
    args = ["train", "--model", str(model_folder), "--data", str(narrow_text), *TRAIN, "--checkpoint-every", "3"]
    out = tmp_path / "k"
    proc = subprocess.run([sys.executable, "-c", KILL, *args, "--out", str(out)], env=_env(), capture_output=True, text=True)
    assert proc.returncode == -9
    code = main([*args, "--out", str(out), "--resume", "--lr", "5e-3"])
    err = capsys.readouterr().err
    assert code == 2 and "another config" in err


def _train_once(seed=0):
    model = make_model("llama")
    cfg = SparsityConfig(sparsity=0.6)
    sparsify_(model, cfg)
    taus = calibrate_(model, [random_ids(4, 32, seed=s) for s in range(3)], cfg, seed=seed, progress=False,
                      samples_per_layer=1000)  # fewer than the 12k inputs: the seeded sampling path is exercised
    ids = random_ids(1, 1024, seed=5).view(-1)
    train_spon_(model, ids, ids[:256], TrainConfig(steps=8, batch_size=4, seq_len=64, eval_every=4, warmup=2, lr=1e-3, seed=seed),
                progress=False)
    return taus, {n: m.alpha.detach().clone() for n, m in sparse_modules(model).items()}


def test_same_seed_same_bits():
    (taus_a, alphas_a), (taus_b, alphas_b) = _train_once(), _train_once()
    assert taus_a == taus_b
    assert all(torch.equal(alphas_a[n], alphas_b[n]) for n in alphas_a)
    assert any(bool(a.any()) for a in alphas_a.values())
    taus_c, _ = _train_once(seed=1)  # and the seed matters (calibration samples differ)
    assert taus_c != taus_a


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_gloo_processes_match_one(model_folder, narrow_text, tmp_path, capsys):
    args = ["train", "--model", str(model_folder), "--data", str(narrow_text), *TRAIN]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "spon.cli", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _vectors(tmp_path / "one"), _vectors(tmp_path / "two")
    import json

    meta = json.loads((tmp_path / "two" / "spon_config.json").read_text())
    assert meta["training"]["processes"] == 2
    for k in one:
        if k.endswith(".threshold"):
            assert torch.equal(one[k], two[k]), k  # merged reservoirs: the very same calibration sample
        else:
            torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
    assert any(bool(v.any()) for k, v in one.items() if k.endswith(".alpha"))


def test_library_resume_leaves_the_callers_random_state_alone(tmp_path):
    model = make_model("llama")
    cfg = SparsityConfig(sparsity=0.6)
    sparsify_(model, cfg)
    calibrate_(model, [random_ids(4, 32, seed=s) for s in range(3)], cfg, progress=False)
    ids = random_ids(1, 1024, seed=5).view(-1)
    tcfg = TrainConfig(steps=6, batch_size=4, seq_len=64, eval_every=3, warmup=2, lr=1e-3)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(RuntimeError, match="stop"):
        def stop(step):
            if step == 3:
                raise RuntimeError("stop")
        train_spon_(model, ids, ids[:256], tcfg, progress=False, checkpoint=ckpt, checkpoint_every=3, on_step=stop)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train_spon_(model, ids, ids[:256], tcfg, progress=False, checkpoint=ckpt, checkpoint_every=3, resume=True)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG continues as if training had not run


def test_a_checkpoint_holding_anything_but_tensors_and_plain_data_is_refused(model_folder, narrow_text, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    torch.save({"version": 1, "payload": Path("not a tensor")}, out / "checkpoint.pt")  # a pickled object of any class
    code = main(["train", "--model", str(model_folder), "--data", str(narrow_text), *TRAIN, "--out", str(out), "--resume"])
    assert code == 2 and "cannot read checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_resume_with_a_checkpoint_only_one_process_sees_fails_on_every_process(tmp_path):
    """Without a shared filesystem only process 0 has the checkpoint: every process must stop with one line."""
    script = textwrap.dedent("""
        import sys
        from spon import distributed as dd
        from spon.errors import SponError
        dd.init_from_env()
        try:
            dd.require_everywhere(dd.rank() == 0, "none has it", "only some processes see the checkpoint")
            print("passed")
        except SponError as e:
            sys.stdout.write(f"error: {e}\\n")  # one write per process: the two lines cannot interleave
            sys.stdout.flush()
        dd.shutdown()  # without it a process can abort at exit when its peer has gone first
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**_env(), "WORLD_SIZE": "1"}, capture_output=True, text=True)
    assert "passed" in proc.stdout  # one process that has it
    path = tmp_path / "s.py"
    path.write_text(script)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(path)]
    proc = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("only some processes see the checkpoint") == 2 and "passed" not in proc.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_the_cli_leaves_the_process_group_before_exit(tmp_path, capsys):
    """A gloo group alive at exit can abort a process whose peer left first: main() must destroy it, error or not."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    assert main(["eval", "--model", str(tmp_path / "missing")]) == 2  # an error path
    assert not dist.is_initialized()
    capsys.readouterr()

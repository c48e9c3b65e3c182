"""What `spon`, `spon --version` and `spon CMD --help` show: the help, grouped options with their choices and defaults,
and only the options a command acts on."""

import pytest

import spon
from spon.cli.main import COMMANDS, main


def _help(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        main([*args, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_bare_spon_prints_the_help_and_succeeds(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spon") and all(name.split()[0] in out for name in COMMANDS)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"spon {spon.__version__}"


def test_train_help_groups_options_and_shows_choices_and_defaults(capsys):
    out = _help(capsys, "train")
    heads = [line for line in out.splitlines() if line.endswith("options:")]
    assert heads == ["options:", "model options:", "data options:", "sparsity options:", "training options:",
                     "output options:", "train options:"]
    assert "--rule {magnitude,wina,cats,rsparse}" in out and "--dtype {float32,bfloat16,float16}" in out
    assert "(default: 0.001)" in out  # --lr
    assert "beat" not in out and "RESULTS" not in out  # no research notes in help text


def test_tuple_defaults_are_printed(capsys):
    out = " ".join(_help(capsys, "sweep").split())
    assert "(default: 0)" in out.split("--seeds", 1)[1]  # a one-seed tuple, not "(default )"
    assert "(default )" not in out


@pytest.mark.parametrize("command, absent", [
    ("demo", "--ignore-weights"), ("calibrate", "--ignore-weights"), ("sweep", "--sparsity "),
    ("bench step", "--threshold-jitter"), ("bench step", "--val-sequences"),
])
def test_options_a_command_does_not_act_on_are_not_offered(capsys, command, absent):
    assert absent not in _help(capsys, *command.split())
    with pytest.raises(SystemExit) as e:
        main([*command.split(), absent.strip(), "1"])
    assert e.value.code == 2


def test_options_still_offered_where_they_act(capsys):
    assert "--ignore-weights" in _help(capsys, "eval")
    assert "--teacher-topk" in _help(capsys, "bench", "step")

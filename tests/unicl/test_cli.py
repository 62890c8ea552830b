"""The `unicl` command line: help, version, the subcommand table, error reporting."""

import argparse
import subprocess
import sys

import pytest

import unicl
from unicl.cli import COMMANDS, main, run_command
from unicl.commands import (
    existing_dir,
    existing_file,
    non_negative_int,
    output_dir,
    output_file,
    positive_int,
    torch_device,
)
from unicl.registry import RegistryError


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"unicl {unicl.__version__}"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_no_arguments_prints_help(capsys):
    assert main([]) == 0
    assert "usage: unicl" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: unicl {name}" in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "unicl", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"unicl {unicl.__version__}"


# ---- errors: reported once, in unicl.cli (tests/unicl/test_bad_input_cli.py has the table) ---- #


def _raising(err):
    def run():
        raise err

    return run


@pytest.mark.parametrize(
    "err, message",
    [
        (ValueError("steps: expected int, got 'x'"), "steps: expected int, got 'x'"),
        (TypeError("box: expected numbers"), "box: expected numbers"),
        (FileNotFoundError(2, "No such file or directory", "a.png"), "a.png: No such file"),
        (PermissionError(13, "Permission denied", "/out"), "/out: Permission denied"),
        (IsADirectoryError(21, "Is a directory", "d"), "d: Is a directory"),
        (FileNotFoundError("model directory not found: m"), "model directory not found: m"),
        (RegistryError("unknown task 'x'; valid task names: a"), "unknown task 'x'; valid task"),
        (ImportError("plugin 'p' cannot be imported"), "plugin 'p' cannot be imported"),
    ],
)
def test_user_errors_become_one_line(err, message, capsys):
    assert run_command("x", _raising(err)) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith(f"unicl x: error: {message}") and err_text.count("\n") == 1


@pytest.mark.parametrize("err", [KeyError("key"), RuntimeError("bug"), AssertionError("bug")])
def test_other_errors_keep_their_traceback(err):
    """Not a user error: a bug in unicl, shown in full."""
    with pytest.raises(type(err)):
        run_command("x", _raising(err))


def test_diverged_training_and_ctrl_c_have_their_own_status(capsys):
    from unicl.training.trainer import TrainingDiverged

    assert run_command("train", _raising(TrainingDiverged("loss is nan at step 3"))) == 3
    assert capsys.readouterr().err == "unicl train: stopped: loss is nan at step 3\n"
    assert run_command("train", _raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "unicl train: interrupted\n"


def test_traceback_flag_shows_the_error_itself(capsys):
    from unicl.config import ConfigError

    with pytest.raises(ConfigError, match="train.steps: expected int"):
        main(["--traceback", "train", "shapes_tiny", "train.steps=abc"])
    assert main(["train", "shapes_tiny", "train.steps=abc"]) == 2
    assert capsys.readouterr().err == "unicl train: error: train.steps: expected int, got 'abc'\n"


def test_options_and_overrides_may_be_intermixed(monkeypatch):
    from unicl.commands import train

    seen = {}
    monkeypatch.setattr(train, "main", lambda args: seen.update(vars(args)) or 0)
    assert main(["train", "--no-progress", "shapes_tiny", "a=1", "--no-progress", "b=2"]) == 0
    assert seen == {"config": "shapes_tiny", "overrides": ["a=1", "b=2"], "no_progress": True}


@pytest.mark.parametrize(
    "kind, text, value",
    [
        (positive_int, "3", 3),
        (positive_int, "0", None),
        (positive_int, "2.5", None),
        (non_negative_int, "0", 0),
        (non_negative_int, "-1", None),
        (torch_device, "cpu", "cpu"),
        (torch_device, "banana", None),
    ],
)
def test_argument_types(kind, text, value):
    if value is None:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            kind(text)
    else:
        assert kind(text) == value


def test_output_and_input_paths(tmp_path):
    (tmp_path / "f").write_text("x")
    assert output_dir(str(tmp_path / "new")) == str(tmp_path / "new")
    assert output_file(str(tmp_path / "f")) == str(tmp_path / "f")
    assert existing_file(str(tmp_path / "f")) == str(tmp_path / "f")
    assert existing_dir(str(tmp_path)) == str(tmp_path)
    for check, path in [
        (output_dir, tmp_path / "f"),
        (output_file, tmp_path),
        (existing_file, tmp_path),
        (existing_file, tmp_path / "missing"),
        (existing_dir, tmp_path / "f"),
        (existing_dir, tmp_path / "missing"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=path.name):
            check(str(path))

"""The command line: help text of every command, torch-free parsing, presets, exit codes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from birdshield.cli import build_parser, main

SRC = Path(__file__).resolve().parents[2] / "src" / "birdshield" / "cli"


def _parsers(parser: argparse.ArgumentParser, name: str = "birdshield"):
    """Every parser under `parser` (subcommands, and their subcommands), with its command path."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_a_help_line_and_no_empty_default():
    commands = list(_parsers(build_parser()))
    assert {"birdshield train", "birdshield evaluate", "birdshield data check", "birdshield demo"} <= {
        n for n, _ in commands
    }
    for name, parser in commands:
        text = parser.format_help()
        assert "(default: None)" not in text, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}"
            if any(s.startswith("--no-") for s in action.option_strings):
                line = parser._get_formatter()._format_action(action)
                assert "(default: True)" not in line, f"{name} {action.option_strings}"


def test_parsing_and_help_never_import_torch():
    code = (
        "import sys; from birdshield.cli import build_parser; p = build_parser(); "
        "p.parse_args(['evaluate', 'r', 'd', '--out', 'o']); p.format_help(); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for source in SRC.glob("*.py"):
        text = source.read_text()
        assert "import torch" not in text and "from torch" not in text, source


def test_threads_is_accepted_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--threads", "1", "data", "check", "x"]).threads == 1
    assert parser.parse_args(["data", "check", "x", "--threads", "3"]).threads == 3
    assert parser.parse_args(["data", "check", "x"]).threads == 0


def test_abbreviations_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["predict", "x.jpg", "--form", "grading"])
    assert e.value.code == 2


def test_a_user_error_is_a_message_without_traceback_and_exit_2(tmp_path: Path, capsys):
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("birdshield data: error:") and "missing" in err.splitlines()[0]
    assert "Traceback" not in err


def test_a_file_name_that_is_not_utf8_is_printed_as_its_bytes(tmp_path: Path, make_kaggle):
    """Under a UTF-8 locale standard output is strict; `data check` lists the file (a duplicate) as it is
    named on disk instead of crashing."""
    root = make_kaggle(tmp_path, ["a", "b"])
    photo = (root / "train" / "a" / "000.jpg").read_bytes()
    for split in ("train", "test"):
        (root / split / "a" / os.fsdecode(b"bird\xff.jpg")).write_bytes(photo)
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # strict, as under en_US.UTF-8
    env["PYTHONPATH"] = os.pathsep.join([str(SRC.parents[1]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "birdshield.cli", "data", "check", str(root)]
    proc = subprocess.run(cmd, env=env, capture_output=True)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]  # 1: problems
    assert b"train/a/bird\xff.jpg (train) == test/a/bird\xff.jpg (test)" in proc.stdout


def test_a_bad_option_value_is_one_line_and_exit_2(tmp_path: Path, capsys):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"")
    assert main(["predict", str(photo), "--defense", "bits", "--defense-param", "2.5"]) == 2
    assert "whole number" in capsys.readouterr().err


def test_train_refuses_an_architecture_timm_does_not_register_before_reading_data(
    tmp_path: Path, capsys, monkeypatch
):
    import timm

    from birdshield import data

    monkeypatch.setattr(data, "discover", lambda *a, **k: pytest.fail("the data was read"))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm built a model"))
    for arch in ("hf-hub:someone/model", "local-dir:/tmp/model", "resnet_typo"):
        assert main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--arch", arch]) == 2
        err = capsys.readouterr().err
        assert (
            err == f"birdshield train: error: architecture must be a timm architecture name such as "
            f"'tf_efficientnet_lite0' (see timm.list_models()), got {arch!r}\n"
        )


@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf"])
def test_serve_needs_a_positive_job_time_limit(capsys, seconds: str):
    assert main(["serve", "--job-timeout", seconds]) == 2  # refused before any model loads
    assert "--job-timeout must be a number of seconds > 0" in capsys.readouterr().err
    help_text = dict(_parsers(build_parser()))["birdshield serve"].format_help()
    assert "--job-timeout SECONDS" in help_text and "(default: 300)" in help_text


def test_an_internal_error_keeps_its_traceback(monkeypatch):
    from birdshield.cli import data as data_command

    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug, not the user's fault")

    monkeypatch.setattr(data_command, "run", broken)  # main() builds its parser after this
    with pytest.raises(RuntimeError, match="a bug"):
        main(["data", "check", "x"])

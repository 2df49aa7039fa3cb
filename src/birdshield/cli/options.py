"""Shared option builders, the help formatter and the one user-error path of every command.

Nothing here imports torch: `birdshield --help` and every parser build stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from ..defenses.specs import DEFENSES, defense_help


class UsageError(Exception):
    """A bad option value found after parsing: printed as one line, exit status 2."""


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn the ValueError a library function raises for a bad argument into a UsageError."""
    try:
        yield
    except ValueError as e:
        raise UsageError(str(e)) from e


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something: not None, not on on/off flags, not on positionals."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or isinstance(default, bool) or default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action) if action.option_strings else action.help


def command(
    sub: argparse._SubParsersAction, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter and the options every command takes."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=Formatter,
        allow_abbrev=False,
        parents=[process_options(argparse.SUPPRESS)],
    )


def process_options(default: object = 0) -> argparse.ArgumentParser:
    """--threads and --debug, accepted before and after the command (after it they only override)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument(
        "--threads",
        type=int,
        default=default,
        help="CPU threads (0 = torch's default). On a CPU shared with other busy processes use fewer than "
        "the cores: each op waits for its slowest thread, so 1 thread can be several times faster there",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=False if default == 0 else argparse.SUPPRESS,
        help="print the full traceback of user errors too (internal errors always print theirs)",
    )
    return p


def literal(text: str) -> str:
    """Help text built from data, made safe for argparse, which %-formats help (`%(default)s`)."""
    return text.replace("%", "%%")


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_device(g: argparse._ActionsContainer) -> None:
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def add_batch_size(
    g: argparse._ActionsContainer, default: int, what: str = "images per forward pass"
) -> None:
    g.add_argument("--batch-size", type=int, default=default, help=what)


def add_n_images(g: argparse._ActionsContainer, what: str) -> None:
    g.add_argument(
        "--n-images",
        type=int,
        default=None,
        metavar="N",
        help=f"{what} a seeded, class-stratified subset of N images (default: all)",
    )


def add_runtime(g: argparse._ActionsContainer, what: str) -> None:
    """--runtime: torch, or onnxruntime on the run's cached export, for the forward-only work."""
    g.add_argument(
        "--runtime",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help=f"what runs {what}: 'onnx' is onnxruntime on RUN_DIR/model.onnx (exported on first use, again "
        "when the weights change), about twice as fast as torch eager on a CPU; 'auto': onnx on a CPU, "
        "torch on a GPU. The two agree to float rounding (logits within 1e-3)",
    )


def add_resume(g: argparse._ActionsContainer, what: str) -> None:
    g.add_argument(
        "--resume",
        action="store_true",
        help=f"continue an interrupted {what} from the progress saved in --out (same options)",
    )


def add_defense(g: argparse._ActionsContainer, names: list[str], what: str) -> None:
    """--defense NAME and --defense-param X (the defence's one parameter)."""
    g.add_argument(
        "--defense", choices=["none", *names], default="none", help=f"{defense_help(names)}. {what}"
    )
    g.add_argument(
        "--defense-param",
        *(["--sigma"] if "smoothing" in names else []),
        type=float,
        default=None,
        metavar="X",
        help="the defence's parameter (default: "
        + ", ".join(f"{n} {DEFENSES[n][0]} {DEFENSES[n][1]:g}" for n in names)
        + ")",
    )

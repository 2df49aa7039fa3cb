"""`birdshield <command>`: one module per command, each only parsing options and calling the library.

No module here imports torch: parsers (and `--help`) build without it; each command's `run` imports the
library it calls.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import traceback

from .. import __version__
from . import attack, certify, compare, data, demo, evaluate, export, options, predict, serve, train

COMMANDS = [train, predict, data, evaluate, attack, certify, compare, export, demo, serve]
RESUMABLE = {"train", "predict", "evaluate", "certify"}  # the commands that save their progress as they go


def build_parser(train_preset: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; `train_preset` makes that preset's values the train command's defaults."""
    parser = argparse.ArgumentParser(
        prog="birdshield",
        description="Train robust bird-species classifiers, attack them, defend them, and report honestly "
        "how robust they are.",
        formatter_class=options.Formatter,
        allow_abbrev=False,
        parents=[options.process_options()],
    )
    parser.add_argument("--version", action="version", version=f"birdshield {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    for module in COMMANDS:
        command = module.add(sub)
        if module is train and train_preset:
            train.apply_preset(command, train_preset)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..errors import USER_ERRORS

    return (options.UsageError, *USER_ERRORS)


def _file_names_as_bytes() -> None:
    """Print a file name that is not valid UTF-8 as the bytes it has on disk (Python holds them as surrogate
    escapes), where a UTF-8 terminal's strict encoding would fail; stderr already escapes them."""
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        sys.stdout.reconfigure(errors="surrogateescape")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _file_names_as_bytes()
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):  # a preset changes the defaults; explicit options still win
        args = build_parser(args.preset).parse_args(argv)
    if args.threads > 0:
        from ..runtime import set_threads

        set_threads(args.threads)
    try:
        return args.handler(args)
    except _user_errors() as e:
        if args.debug:
            traceback.print_exc()
        print(f"birdshield {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was saved stays saved; one line, no traceback
        resumable = getattr(args, "out", None) != "-"  # predict to stdout keeps nothing to resume
        print(interrupted_message(args.command, resumable), file=sys.stderr)
        return 130


def interrupted_message(command: str, resumable: bool = True) -> str:
    if command in RESUMABLE and resumable:
        return f"birdshield {command}: interrupted; run the same command with --resume to continue"
    return f"birdshield {command}: interrupted"


if __name__ == "__main__":
    sys.exit(main())

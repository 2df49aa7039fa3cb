"""The README and the user guide stay true: every relative link points at a file (and a heading of it),
every `birdshield` command in their shell blocks is accepted by the parser as written, and every command
they mention inline (`birdshield train DATA --cv K`, placeholders and all) names a real command and real
options of it."""

from __future__ import annotations

import argparse
import functools
import re
import shlex
from pathlib import Path

import pytest
from helpers import REPO

from birdshield.cli import build_parser
from birdshield.cli.options import process_options

PAGES = sorted([REPO / "README.md", REPO / "experiments" / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
INLINE_COMMAND = re.compile(r"`(birdshield [^`]+)`")


def _commands(text: str) -> list[list[str]]:
    """argv of every `birdshield ...` (or `torchrun ... -m birdshield.cli ...`) command in the page's shell
    blocks, after `birdshield`."""
    found = []
    for block in SHELL_BLOCK.findall(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            found.append(shlex.split(line, comments=True))
    argvs = []
    for argv in found:
        while argv and re.fullmatch(r"[A-Za-z_]+=\S*", argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        if argv[:1] == ["birdshield"]:
            argvs.append(argv[1:])
        elif argv[:1] == ["torchrun"] and "birdshield.cli" in argv:
            argvs.append(argv[argv.index("birdshield.cli") + 1 :])
    return argvs


def test_the_pages_quote_commands_and_links() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(_commands(readme)) >= 8 and LINK.search(readme)  # the checks below check something
    assert INLINE_COMMAND.search(readme)
    assert len(readme.splitlines()) <= 150


@functools.cache  # one parse per page, not one per link into it
def _anchors(page: Path) -> set[str]:
    """The ids GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_points_at_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        path, _, heading = target.partition("#")
        if re.match(r"[a-z]+:", path):
            continue
        file = page.parent / path if path else page
        if not file.exists() or (heading and file.suffix == ".md" and heading not in _anchors(file)):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def _options(words: list[str]) -> set[str] | None:
    """The option strings of the (sub)command the words name, e.g. ["data", "check"] (None: no such
    command)."""
    parser, found = build_parser(), None
    for word in words:
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands or word not in commands[0].choices:
            break
        parser = found = commands[0].choices[word]
    return None if found is None else {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_command_mentioned_inline_exists_with_its_options(page: Path) -> None:
    unknown = []
    for mention in INLINE_COMMAND.findall(page.read_text()):
        words = process_options().parse_known_args(mention.split()[1:])[1]  # less --threads, --debug
        options = _options(words)
        flags = {w.split("=")[0] for w in words[1:] if w.startswith("--")}
        if options is None or flags - options:
            unknown.append(mention)
    assert not unknown, f"{page.name}: no such command or option in {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_quoted_birdshield_command_parses(page: Path) -> None:
    rejected = []
    for argv in _commands(page.read_text()):
        try:
            args = build_parser().parse_args(argv)
            if getattr(args, "preset", None):  # a preset changes the defaults the options are read against
                build_parser(args.preset).parse_args(argv)
        except SystemExit:
            rejected.append(shlex.join(["birdshield", *argv]))
    assert not rejected, f"{page.name}: the parser rejects {rejected}"


def test_every_test_the_pages_name_exists() -> None:
    """docs/guarantees.md names the test behind each promise: a renamed or deleted test must not leave a
    promise pointing at nothing."""
    defined = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    named = {name for page in PAGES for name in re.findall(r"`(test_[a-z0-9_]+)\*?`", page.read_text())}
    assert named, "the pages name no test: the check checks nothing"
    missing = {n for n in named if not any(d.startswith(n) for d in defined)}
    assert not missing, f"tests named in the docs but defined nowhere: {sorted(missing)}"

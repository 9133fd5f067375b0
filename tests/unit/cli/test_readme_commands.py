"""Every ``lstmdet`` command the README shows parses with the real argument parser (nothing is run).

Commands come from the README's code blocks and from inline code spans of three or more words
that start with ``lstmdet``. An optional part ``[...]`` is tried both left out and given; ``a | b`` alternatives
inside brackets take each in turn; a line ``lstmdet jobs list | status ID | ...`` is one command
per alternative. Upper-case placeholders (``ID``, ``N``, ``F``, ``CONFIG``) get sample values.
"""

from __future__ import annotations

import itertools
import re
import shlex

import pytest
from helpers import ROOT

from lstmdet.cli.main import build_parser

PLACEHOLDERS = {"ID": "0123abcd", "N": "2", "F": "0.5", "CONFIG": "config.yaml", "NAME": "bilstm"}


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        lines += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip().startswith("lstmdet ")]
    # inline spans of two words name a command in prose (`lstmdet detect`); longer ones are commands
    lines += [span for span in re.findall(r"`(lstmdet [^`]+)`", text) if len(span.split()) > 2]
    return sorted(set(lines))


def _alternatives(command: str) -> list[str]:
    """``lstmdet jobs list | status ID`` -> one command per alternative (bracketed ``|`` untouched)."""
    parts = re.split(r" \| (?![^\[]*\])", command)
    if len(parts) == 1:
        return parts
    prefix = parts[0].rsplit(" ", 1)[0]
    return [parts[0]] + [f"{prefix} {part}" for part in parts[1:]]


def _variants(command: str) -> list[list[str]]:
    """argv lists: each optional group left out or given (each choice of an ``a|b`` inside it)."""
    groups = re.findall(r"\[([^\[\]]*)\]", command)
    pieces = re.split(r"\[[^\[\]]*\]", command)
    choices = []
    for group in groups:
        flag, _, value = group.partition(" ")
        if "|" in value:
            options = [f"{flag} {alternative}" for alternative in value.split("|")]
        else:
            options = flag.split("|") if "|" in flag else [group]
        choices.append(["", *options])
    argvs = []
    for picked in itertools.product(*choices):
        text = pieces[0] + "".join(part + rest for part, rest in zip(picked, pieces[1:], strict=True))
        words = shlex.split(text)[1:]  # drop "lstmdet"
        argvs.append([PLACEHOLDERS.get(word, word) for word in words])
    return argvs


CASES = [argv for command in _readme_commands() for alt in _alternatives(command) for argv in _variants(alt)]


def test_the_readme_shows_commands_of_every_kind():
    commands = {argv[0] for argv in CASES}
    assert {"data", "train", "eval", "detect", "worker", "submit", "jobs", "export", "plugins", "model"} <= commands
    assert len(CASES) > 40


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(argv) for argv in CASES])
def test_readme_command_parses(argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # the parser reported a usage error for a command the README shows
        pytest.fail(f"`lstmdet {' '.join(argv)}` from the README does not parse (exit {exc.code})")
    assert callable(getattr(args, "func", None)), argv

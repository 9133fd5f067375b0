"""Entry point of the ``lstmdet`` command: argument parsing and error reporting.

Each sub-command lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``.
User mistakes (:class:`~lstmdet.errors.LstmdetError`) are printed as one line on stderr with exit
status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lstmdet.cli import data_cmds, detect_cmds, export_cmds, inspect_cmds, job_cmds, train_cmds
from lstmdet.errors import LstmdetError

COMMANDS = (inspect_cmds, train_cmds, data_cmds, detect_cmds, job_cmds, export_cmds)


def build_parser() -> argparse.ArgumentParser:
    """The full ``lstmdet`` argument parser."""
    from lstmdet import __version__

    parser = argparse.ArgumentParser(
        prog="lstmdet",
        description="LSTM-family sequence encoders between CNN backbones and classification or detection heads.",
    )
    parser.add_argument("--version", action="version", version=f"lstmdet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LstmdetError as exc:
        print(f"lstmdet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lstmdet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

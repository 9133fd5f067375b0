"""Entry point of the ``lstmdet`` command: argument parsing, and the one place errors are reported.

Each sub-command lives in its own module with ``add_parsers(subparsers)`` and ``run(args) -> int``.
The rule, enforced by :func:`main` alone:

* a user error (a bad argument, file, config, or an unreachable or misconfigured service) prints
  ONE line on stderr naming what is wrong and what to do, and exits with status 2. Usage mistakes
  are reported so by :class:`~lstmdet.cli.arguments.Parser`; everything else a user can cause is
  raised as a :class:`~lstmdet.errors.LstmdetError` where it happens (commands do not catch broad
  exception types);
* any other exception is a bug: its traceback is printed and the exit status is 1;
* lstmdet's own warnings (:class:`~lstmdet.errors.LstmdetWarning`) print as one plain line,
  ``lstmdet: warning: ...``, without a source path.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import TextIO

from lstmdet.cli import data_cmds, detect_cmds, export_cmds, inspect_cmds, job_cmds, train_cmds
from lstmdet.cli.arguments import Parser
from lstmdet.errors import LstmdetError, LstmdetWarning

COMMANDS = (inspect_cmds, train_cmds, data_cmds, detect_cmds, job_cmds, export_cmds)
#: Exit statuses of :func:`main`.
EXIT_USER_ERROR, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130


def build_parser() -> Parser:
    """The full ``lstmdet`` argument parser."""
    from lstmdet import __version__

    parser = Parser(
        prog="lstmdet",
        description="LSTM-family sequence encoders between CNN backbones and classification or detection heads.",
    )
    parser.add_argument("--version", action="version", version=f"lstmdet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 a bug or a command's own failure, 2 user error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error the parser has reported
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    previous = warnings.showwarning
    with warnings.catch_warnings():  # restores showwarning and the filters on the way out

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
            if issubclass(category, LstmdetWarning):
                print(f"lstmdet: warning: {message}", file=file or sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            return int(args.func(args) or 0)
        except LstmdetError as exc:
            print(f"lstmdet {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("lstmdet: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception:  # a bug: show where it happened
            traceback.print_exc()
            print(f"lstmdet {args.command}: internal error (a bug in lstmdet or a plugin); the traceback above "
                  "shows where: please report it", file=sys.stderr)  # fmt: skip
            return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())

"""The ``lstmdet`` command line."""

from lstmdet.cli.main import main

__all__ = ["main"]

"""The `hk` command (click): the group in `main`, one module per family of subcommands."""

from .main import cli, main

__all__ = ["cli", "main"]

"""The `hk` command: a thin click adapter over the store and the mount.

Subcommands live in their own modules (`hkfs/cli/*.py`), each registering on the
group below, so that `hk --help` and the store commands never import FUSE.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import IO, Any

import click

from ..core.errors import HKError
from .context import ThroughMount


class OneLineUsageError(click.UsageError):
    """A usage error as one line: what is wrong, the usage, where the help is (click prints
    three lines and a blank one, the error last)."""

    def show(self, file: IO[Any] | None = None) -> None:
        message = self.format_message()
        line = f"Error: {message}" + ("" if message.endswith((".", "?", "!")) else ".")
        if self.ctx is not None:
            usage = " ".join(self.ctx.get_usage().split())          # 'Usage: hk atkw [OPTIONS] ...'
            line += f" {usage} (help: {self.ctx.command_path} -h)"
        click.echo(line, file=file or sys.stderr)


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return exc                                     # bare `hk` prints the help, as before
    return OneLineUsageError(exc.format_message(), exc.ctx)


def user_error(exc: HKError | PermissionError | sqlite3.Error) -> click.ClickException:
    """The one place an error a user can cause becomes one clear line on stderr (exit 1):
    the core's errors say it themselves; a permission or catalog error says what failed."""
    if isinstance(exc, PermissionError):
        return click.ClickException(f"permission denied: {exc.filename or exc}")
    if isinstance(exc, sqlite3.Error):
        return click.ClickException(f"cannot use the store's catalog: {exc}")
    return click.ClickException(str(exc))


class HKGroup(click.Group):
    """Turns core errors into one clear line on stderr and exit status 1, usage errors into
    one line and exit status 2."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:              # `hk --bogus`
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:              # a subcommand's arguments, an unknown command
            raise _one_line(exc) from None
        except (HKError, PermissionError, sqlite3.Error) as exc:
            raise user_error(exc) from exc
        except ThroughMount as tm:                   # another user's hk in a shared mount
            from .through_mount import answer
            try:
                return answer(tm)
            except (HKError, PermissionError) as exc:
                raise user_error(exc) from exc


@click.group(cls=HKGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="hkfs")
def cli(verbose: int) -> None:
    """hkfs: files named by hierarchical keywords.

    Example: hk mount ~/hkstore ~/hk && cd ~/hk/@/photo && ls
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hk")


# Subcommand modules register themselves on `cli` (one import line each).
from . import (  # noqa: E402
    embed,  # noqa: E402,F401  (hk embed / hk query)
    keywords,  # noqa: E402,F401  (hk mvkw / mergekw)
    mount,  # noqa: E402,F401  (hk mount / umount / demo)
    paper,  # noqa: E402,F401  (the paper's commands: mkkw ... rme)
    tools,  # noqa: E402,F401  (hk path / kw / info / fsck / prompt / shell-init)
)

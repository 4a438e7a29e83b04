"""Keyword housekeeping beyond the paper: `hk mvkw` (rename or move) and `hk mergekw`.

TMSU and Tagsistant users expect to rename a tag without retagging every file by
hand (atkw/dtkw/rmkw). Each command is one hkfs.core.store.Store.move_keyword call,
so a keyword moves with its child keywords, its files and the DKLs that name it in
one transaction.
"""

from __future__ import annotations

import click

from .context import here, store_options
from .main import cli


@cli.command("mvkw")
@click.argument("src", metavar="HK")
@click.argument("dst", metavar="NEWHK")
@click.option("-p", "--parents", is_flag=True, help="Make NEWHK's missing parent keywords.")
@store_options
def mvkw_cmd(src: str, dst: str, parents: bool, store: str | None, user: str | None) -> None:
    """Rename or move a keyword, with its child keywords and its files.

    NEWHK must not exist (hk mergekw merges into an existing keyword); its parent
    must, unless -p. The mount's `mv @/old @/new` does the same.

    Example: hk mvkw //animal/dgo //animal/dog; hk mvkw //dog //animal/dog
    """
    with here(store, user) as h:
        h.require_own_ns()
        h.store.move_keyword(h.ns, h.keyword(src), h.keyword(dst), parents=parents)


@cli.command("mergekw")
@click.argument("src", metavar="HK")
@click.argument("dst", metavar="INTOHK")
@store_options
def mergekw_cmd(src: str, dst: str, store: str | None, user: str | None) -> None:
    """Merge keyword HK into the existing INTOHK, then remove HK.

    Files carrying HK (or a descendant) carry INTOHK (or the same descendant under
    it) instead; HK's child keywords move under INTOHK, merging with namesakes.

    Example: hk mergekw //pics //photo
    """
    with here(store, user) as h:
        h.require_own_ns()
        h.store.move_keyword(h.ns, h.keyword(src), h.keyword(dst), merge=True)

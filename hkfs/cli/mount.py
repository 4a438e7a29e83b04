"""`hk mount`, `hk umount`, `hk demo`: the mount commands (they never import FUSE themselves;
the daemon does, in hkfs.fuse.operations)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from ..fuse.daemon import clear_dead_mount, mount, parse_options, umount
from ..fuse.mountinfo import find_mount
from .main import cli


@cli.command("mount")
@click.argument("store", type=click.Path(file_okay=False, path_type=Path))
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@click.option("-f", "--foreground", is_flag=True, help="Serve in the foreground until unmounted.")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="Mount options passed on to FUSE, e.g. -o allow_other,default_permissions.")
@click.option("-d", "--debug", is_flag=True, help="Log every FUSE request (with -f, to stderr).")
def mount_cmd(store: Path, mountpoint: Path, foreground: bool, options: tuple[str, ...],
              debug: bool) -> None:
    """Mount STORE (created empty when missing) on MOUNTPOINT.

    Returns once the mount is ready; the daemon runs in the background and logs
    to STORE/daemon.log. Unmount with `hk umount MOUNTPOINT`.

    Example: mkdir -p ~/hk && hk mount ~/hkstore ~/hk && ls ~/hk/@
    """
    opts: dict[str, object] = {}
    for o in options:
        opts.update(parse_options(o))
    note = clear_dead_mount(mountpoint)
    if note:
        click.echo(note, err=True)
    status = mount(store, mountpoint, options=opts, foreground=foreground, debug=debug)
    if foreground and status:
        sys.exit(status)


@cli.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path, readable=False))
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the daemon.")
def umount_cmd(mountpoint: Path, timeout: float) -> None:
    """Unmount MOUNTPOINT and wait until its daemon has finished writing.

    Fails (exit status 1, saying why) when the mount is busy or not an hkfs mount.

    Example: hk umount ~/hk
    """
    note = clear_dead_mount(mountpoint)
    if note:
        click.echo(note)
        return
    umount(mountpoint, timeout=timeout)


@cli.command("demo")
@click.option("--store", "store", default="demo-store", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="The demo store (made on first run).")
@click.option("--mountpoint", default="demo-mnt", show_default=True,
              type=click.Path(path_type=Path), help="Where to mount it (made when missing).")
def demo_cmd(store: Path, mountpoint: Path) -> None:
    """Mount a store with demo data (the paper's LaTeX example among a few dozen files).

    Example: hk demo && ls demo-mnt/@
    """
    from ..core.store import Store
    from ..demo.data import fill_demo, fill_paper_home

    mnt = Path(os.path.abspath(mountpoint))
    note = clear_dead_mount(mnt)
    if note:
        click.echo(note, err=True)
    found = find_mount(mnt)
    if found is not None and found[0] == mnt:
        click.echo(f"already mounted: {mnt} (store {found[1]})")
    else:
        mnt.mkdir(parents=True, exist_ok=True)
        fresh = not (store / "catalog.sqlite").exists()
        with Store.open(store, create=True) as st:
            if fresh:
                fill_demo(st)
            fill_paper_home(st)           # once: older demo stores get it too (docs/tutorial.md)
            from ..demo.embeddings import fill_demo_embeddings
            fill_demo_embeddings(st)      # idempotent: older demo stores get them too (docs/query.md)
        mount(store, mnt)
        click.echo(f"hkfs demo store {os.path.abspath(store)} mounted on {mnt}")
    rel = shlex.quote(str(mountpoint))
    # Each hint works on every run (mkdir -p: the keyword may exist from the last one).
    tries = [
        (f"ls {rel}/@", "top-level keywords"),
        (f"ls {rel}/@/workshop", "files carrying //workshop (shared names: main~ID.tex)"),
        (f"ls {rel}/@/workshop/@/SIG/DPS", "//workshop//SIG/DPS: the paper's LaTeX example"),
        (f"ls {rel}/work {rel}/work/,", "a directory, and the view of its keyword list"),
        (f"getfattr -n user.hk.keywords {rel}/@/photo/@/animal/cat/tama.jpg", "a file's keywords"),
        (f"mkdir -p {rel}/@/animal/fish", "make a keyword; ln/mv/rm in views tag and untag"),
        (f"cat {rel}/@/photo/@/animal/fig2.jpg.query", "most similar photos, among animals"),
        (f"ls {rel}/tada", "tada's home: the paper's Figs. 1-2 start here (docs/tutorial.md)"),
    ]
    width = max(len(c) for c, _ in tries)
    click.echo("\nTry:")
    for cmd, why in tries:
        click.echo(f"  {cmd.ljust(width)}  # {why}")
    # `make umount` only where it means this mount: in the checkout, with the Makefile's mount point.
    in_checkout = Path("Makefile").is_file() and Path("hkfs/cli/mount.py").is_file()
    if in_checkout and mnt == Path(os.path.abspath("demo-mnt")):
        click.echo(f"\nUnmount with:  make umount   (or: hk umount {rel})")
    else:
        click.echo(f"\nUnmount with:  hk umount {rel}")

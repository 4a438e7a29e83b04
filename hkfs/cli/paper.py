"""The paper's commands (Table 1 and §4.2) as `hk` subcommands.

mkkw rmkw atkw dtkw akl rkl ldf chfn ls chns rm rme. Run inside a mount they act
on the current directory and its CKL (the DKL of the cwd); arguments use the
paper's notation (`//a//b,name`, `,`, `,//c`, `,name`) or are the file names
the shell expanded from a glob. `hk shell-init` defines the bare names
(`akl //workshop`) the paper's users typed. A thin adapter: every effect is one
hkfs.core.store call.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

import click

from ..core.errors import InvalidArgument, NameClash, NotFound, PermissionDenied
from ..core.naming import HK, format_hk, format_hk_list, parse_typed_hk_list, parse_typed_spec
from ..mount.views import DirLoc, KeySpaceLoc, ViewLoc, detach_set
from .context import (
    FileRef,
    Here,
    here,
    store_options,
)
from .main import cli

__all__ = ["format_columns", "print_names"]

NAME_CLASH_LINE = "files with the same filename."


def format_columns(names: Sequence[str], width: int) -> list[str]:
    """Names in columns, filled top to bottom like `ls -C`, one space between columns.

    Uses the most columns that fit in `width`; the paper's Fig. 2 shows this layout.
    """
    n = len(names)
    if n == 0:
        return []
    for cols in range(n, 0, -1):
        rows = -(-n // cols)
        grid = [list(names[c * rows:(c + 1) * rows]) for c in range(cols)]
        grid = [col for col in grid if col]
        widths = [max(len(x) for x in col) for col in grid]
        if sum(widths) + len(widths) - 1 <= width or cols == 1:
            lines = []
            for r in range(rows):
                cells = [(grid[c][r], widths[c]) for c in range(len(grid)) if r < len(grid[c])]
                line = " ".join(x.ljust(w) for x, w in cells[:-1])
                lines.append((line + " " if line else "") + cells[-1][0])
            return lines
    return list(names)  # pragma: no cover


def print_names(names: Sequence[str], *, one_per_line: bool = False) -> None:
    """A terminal gets columns (like ls); a pipe gets one line of names separated by single spaces."""
    if not names:
        return
    if one_per_line:
        lines = list(names)
    elif sys.stdout.isatty():
        lines = format_columns(names, shutil.get_terminal_size().columns)
    else:
        lines = [" ".join(names)]
    for line in lines:
        click.echo(line)


def _counted(counts: dict[str, int]) -> list[str]:
    """`ls ,`: a shared name once, with its count: main.tex(3)."""
    return [f"{n}({c})" if c > 1 else n for n, c in sorted(counts.items())]


def _require_dir_writable(h: Here, dirid: int) -> None:
    d = h.store.dir(dirid)
    if os.geteuid() not in (0, d.uid):
        raise PermissionDenied(f"permission denied: the directory {h.rel} is not yours")


# ---------------------------------------------------------------------- keywords

@cli.command("mkkw")
@click.argument("hks", nargs=-1, required=True, metavar="HK...")
@click.option("-p", "--parents", is_flag=True, help="Make missing parent keywords too; no error if it exists.")
@store_options
def mkkw_cmd(hks: tuple[str, ...], parents: bool, store: str | None, user: str | None) -> None:
    """Make hierarchical keywords (paper: mkkw).

    The parent must exist unless -p is given.

    Example: hk mkkw -p //animal/dog/poodle
    """
    with here(store, user) as h:
        h.require_own_ns()
        for text in hks:
            h.store.mkkw(h.ns, h.keyword(text), parents=parents)


@cli.command("rmkw")
@click.argument("hks", nargs=-1, required=True, metavar="HK...")
@store_options
def rmkw_cmd(hks: tuple[str, ...], store: str | None, user: str | None) -> None:
    """Remove keywords no file carries and that have no children (paper: rmkw).

    Example: hk rmkw //animal/dog/poodle
    """
    with here(store, user) as h:
        h.require_own_ns()
        for text in hks:
            h.store.rmkw(h.ns, h.keyword(text))


# ---------------------------------------------------------------------- files' HKs

def _file_refs(h: Here, files: Sequence[str]) -> list[FileRef]:
    refs = h.all_files(files)
    for r in refs:
        h.require_own_ns(r.info.ns)
    return refs


@cli.command("atkw")
@click.argument("hklist", metavar="HKLIST")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("-p", "--create", is_flag=True, help="Make keywords that do not exist yet.")
@store_options
def atkw_cmd(hklist: str, files: tuple[str, ...], create: bool, store: str | None, user: str | None) -> None:
    """Attach the HKs of HKLIST to files (paper: atkw).

    HKLIST is '//a//b' or, as in the paper, '//a,//b'; ',' is the CKL. FILE is a
    name in the current directory (a shell glob works), a path, or a spec.

    Example (paper Fig. 1): hk atkw //SIG/DPS,//workshop *
    """
    with here(store, user) as h:
        hl = parse_typed_hk_list(hklist, h.ckl)
        if not create:
            _need_keywords(h, h.ns, hl)
        for r in _file_refs(h, files):
            h.store.atkw(r.info.id, hl, create=create)


@cli.command("dtkw")
@click.argument("hklist", metavar="HKLIST")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@store_options
def dtkw_cmd(hklist: str, files: tuple[str, ...], store: str | None, user: str | None) -> None:
    """Detach HKs from files (paper: dtkw); //a detaches //a and its descendants.

    A file left with no HK and no link is kept in lost+found.

    Example: hk dtkw //workshop main.log
    """
    with here(store, user) as h:
        hl = parse_typed_hk_list(hklist, h.ckl)
        _need_keywords(h, h.ns, hl)
        for r in _file_refs(h, files):
            h.store.dtkw(r.info.id, hl)


def _need_keywords(h: Here, ns: int, hl: Sequence[HK]) -> None:
    for k in hl:
        if not h.store.keyword_exists(ns, k):
            raise NotFound(f"no keyword {format_hk(k)}")


# ---------------------------------------------------------------------- the CKL

@cli.command("akl")
@click.argument("hks", nargs=-1, required=True, metavar="HK...")
@store_options
def akl_cmd(hks: tuple[str, ...], store: str | None, user: str | None) -> None:
    """Add HKs to the CKL, the current directory's keyword list (paper: akl).

    Example (paper Fig. 2): hk akl //workshop
    """
    with here(store, user) as h:
        dirid = h.need_dir("akl")
        _require_dir_writable(h, dirid)
        hl = [h2 for t in hks for h2 in parse_typed_hk_list(t)]
        _need_keywords(h, h.ns, hl)
        h.store.akl(dirid, hl)


@cli.command("rkl")
@click.argument("hks", nargs=-1, required=True, metavar="HK...")
@store_options
def rkl_cmd(hks: tuple[str, ...], store: str | None, user: str | None) -> None:
    """Remove HKs from the CKL (paper: rkl).

    Example: hk rkl //SIG/DPS
    """
    with here(store, user) as h:
        dirid = h.need_dir("rkl")
        _require_dir_writable(h, dirid)
        h.store.rkl(dirid, [h2 for t in hks for h2 in parse_typed_hk_list(t)])


@cli.command("chns")
@click.argument("user_name", metavar="USER")
@store_options
def chns_cmd(user_name: str, store: str | None, user: str | None) -> None:
    """Make ',' in the current directory refer to USER's namespace (paper §4.2: chns).

    The DKL names keywords of the old namespace, so it is cleared.

    Example: hk chns higuchi
    """
    with here(store, user) as h:
        dirid = h.need_dir("chns")
        _require_dir_writable(h, dirid)
        h.store.chns(dirid, user_name)


# ---------------------------------------------------------------------- loading and listing

@cli.command("ldf")
@click.argument("spec", required=False, metavar="[SPEC]")
@store_options
def ldf_cmd(spec: str | None, store: str | None, user: str | None) -> None:
    """Load files into the current directory: link every file the CKL (or SPEC) matches (paper: ldf).

    Fails, linking nothing, when two of them share a file name; the names are
    listed on the next line.

    Example (paper Fig. 2): hk ldf
    """
    with here(store, user) as h:
        dirid = h.need_dir("ldf")
        _require_dir_writable(h, dirid)
        hl: Sequence[HK] | None = None
        name = None
        if spec is not None:
            if not (spec.startswith(",") or spec.startswith("//")):
                raise InvalidArgument(f"{spec!r}: ldf takes a spec (',', ',//c', '//a//b,name')")
            hl, name = parse_typed_spec(spec, h.ckl)
        try:
            h.store.ldf(dirid, hl, name)
        except NameClash as exc:
            raise click.ClickException(NAME_CLASH_LINE + "\n" + " ".join(exc.names)) from exc


@cli.command("ls")
@click.argument("specs", nargs=-1, metavar="[SPEC|FILE]...")
@click.option("-1", "one", is_flag=True, help="One name per line.")
@store_options
def ls_cmd(specs: tuple[str, ...], one: bool, store: str | None, user: str | None) -> None:
    """List file names (paper: ls).

    With no argument, the current directory (in a keyword view: its matches).
    `ls ,` lists the CKL's matches; a name that several of them share is shown
    once with its count, main.tex(3). Also `ls ,//c`, `ls //a//b`, `ls ,main.tex`.

    Example (paper Fig. 2): hk ls ,
    """
    with here(store, user) as h:
        names: list[str] = []
        for spec in specs or ("",):
            names += _ls_one(h, spec)
        print_names(names, one_per_line=one)


def _ls_one(h: Here, spec: str) -> list[str]:
    if spec == "":
        if h.dirid is not None:
            return [e.name for e in h.store.listdir(h.dirid)]
        if h.keyspace:
            return h.store.keyword_children(h.ns, ())
        return _counted(h.store.name_counts(h.ns, h.view or ()))
    if spec.startswith(",") or spec.startswith("//"):
        hl, name = parse_typed_spec(spec, h.ckl)
        _need_keywords(h, h.ns, hl)
        counts = h.store.name_counts(h.ns, hl)
        if name is not None:
            counts = {name: counts[name]} if name in counts else {}
            if not counts:
                raise NotFound(f"{spec}: no file matches")
        return _counted(counts)
    loc = h.locate(spec)
    if isinstance(loc, DirLoc):
        return [e.name for e in h.store.listdir(loc.dirid)]
    if isinstance(loc, (ViewLoc, KeySpaceLoc)):
        if isinstance(loc, KeySpaceLoc):
            return h.store.keyword_children(loc.ns, ())
        return _counted(h.store.name_counts(loc.ns, loc.hks))
    return [h.files(spec)[0].info.name]


# ---------------------------------------------------------------------- names and removal

@cli.command("chfn")
@click.argument("file", metavar="FILE")
@click.argument("new_name", metavar="NEWNAME")
@store_options
def chfn_cmd(file: str, new_name: str, store: str | None, user: str | None) -> None:
    """Change a file's name (paper: chfn); links that carried the old name follow.

    Example: hk chfn ,main.tex paper.tex
    """
    with here(store, user) as h:
        ref = h.files(file, many=False)[0]
        h.require_file_owner(ref.info)
        h.store.chfn(ref.info.id, new_name)


@cli.command("rm")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@store_options
def rm_cmd(files: tuple[str, ...], store: str | None, user: str | None) -> None:
    """Remove files from the current directory; the entities stay (paper: rm).

    A file that carries an HK stays reachable by its keywords. In a keyword view,
    rm detaches the view's HKs. Only a file with no HK and no other link is
    deleted, as UNIX rm would. Same as the system rm inside the mount.

    Example (paper Fig. 1): hk rm *
    """
    with here(store, user) as h:
        for arg in files:
            if arg.startswith(",") or arg.startswith("//"):
                raise InvalidArgument(f"{arg}: rm removes a directory's link; use dtkw or rme for specs")
            ref = h.files(arg)[0]
            if ref.dirid is not None and ref.link_name is not None:
                _require_dir_writable(h, ref.dirid)
                h.store.unlink(ref.dirid, ref.link_name)
            elif ref.view is not None:
                h.require_own_ns(ref.info.ns)
                h.store.dtkw(ref.info.id, detach_set(ref.info.hks, ref.view))


@cli.command("rme")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--all", "all_", is_flag=True, help="Allow a spec to delete several files.")
@store_options
def rme_cmd(files: tuple[str, ...], all_: bool, store: str | None, user: str | None) -> None:
    """Delete file entities: their bytes, keywords and every link (paper: rme).

    A spec that matches several files is refused unless --all is given; then each
    deleted file is named on stdout.

    Example: hk rme ,//SIG/OS,main.log
    """
    with here(store, user) as h:
        refs: list[FileRef] = []
        for arg in files:
            refs += h.files(arg, many=all_, too_many=f"give a spec that names one, or rme --all {arg} "
                                                     "to delete them all")
        for r in refs:
            h.require_file_owner(r.info)
        done: set[int] = set()
        for r in refs:
            if r.info.id not in done:
                done.add(r.info.id)
                h.store.rme(r.info.id)
                if all_:       # a spec may have matched more than the user pictured: say what went
                    click.echo(f"deleted {format_hk_list(r.info.hks)},{r.info.name}")

"""`hk` tools around the paper's commands: path, kw, info, fsck, prompt, shell-init, complete.

`hk path` turns the paper's notation into a mount path (the kernel folds '//',
so a spec cannot pass through a path as it is); `hk prompt`, `hk shell-init`
and the hidden `hk complete` give a shell the paper's prompt (the CKL on the
right) and its keyword completion (§4.1).
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import click

from ..core.completion import complete_word
from ..core.errors import HKError, InvalidArgument, NotFound, StoreLocked
from ..core.naming import (
    HK,
    format_hk,
    format_hk_list,
    parse_typed_spec,
    term_keyword,
)
from ..mount.paths import COMMA, clash_name, listed_name, view_path
from .context import FileRef, Here, ThroughMount, here, store_options
from .main import cli

log = logging.getLogger(__name__)

PAPER_COMMANDS = ("mkkw", "rmkw", "atkw", "dtkw", "akl", "rkl", "ldf", "chfn", "chns", "rme")
SHELLS = ("bash", "zsh")


# ---------------------------------------------------------------------- path

def spec_base(hl: tuple[HK, ...], relative: bool, *, cwd: str, mount: str, in_dir: bool, in_view: bool,
              other_ns: bool) -> str:
    """The mount path of the view a spec's HK list `hl` names (`relative`: written after ',').

    `cwd` is the current directory's path, `in_view` a view with a list of its own, `other_ns`
    a directory whose ',' and '@' are another namespace's (chns)."""
    if relative:
        if in_dir:
            return cwd + "/," + view_path(hl)        # a directory's ',' is its CKL's view
        if in_view:
            return cwd + view_path(hl)               # a view is its own CKL's view (as `hk ls ,`)
        raise InvalidArgument("',' needs a directory or a keyword view as the current directory")
    anchor = cwd if in_dir and other_ns else mount.rstrip("/")   # chns: this directory's '@'
    return anchor + view_path(hl)


def spec_to_paths(h: Here, spec: str) -> list[str]:
    """Mount paths for a spec: one, or one per file when several share the name (their clash names)."""
    assert h.mount is not None
    cwd = str(h.mount).rstrip("/") + (h.rel if h.rel != "/" else "")
    if not (spec.startswith(",") or spec.startswith("//")):
        return [os.path.normpath(os.path.join(cwd or "/", spec))]
    relative = spec.startswith(",")
    hl, name = parse_typed_spec(spec, ())
    for k in hl:
        if not h.store.keyword_exists(h.ns, k):
            raise NotFound(f"no keyword {format_hk(k)}")
    base = spec_base(hl, relative, cwd=cwd, mount=str(h.mount), in_dir=h.dirid is not None,
                     in_view=bool(h.view) and not h.keyspace, other_ns=h.ns != h.mount_ns)
    full = tuple(h.ckl) + hl if relative else hl
    if name is None:
        return [base]
    matches = h.store.match(h.ns, full, name)
    if len(matches) > 1:
        return [f"{base}/{clash_name(name, m.id)}" for m in matches]
    if relative and not hl and h.dirid is not None:
        return [cwd + "/" + COMMA + name]
    kw = term_keyword(full[-1]) if full else ()      # a term with operators: its keyword's children
    children = h.store.keyword_children(h.ns, kw) if kw else []
    return [base + "/" + listed_name(name, matches[0].id if matches else 0, shared=False,
                                     keyword=name in children)]


@cli.command("path")
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
def path_cmd(specs: tuple[str, ...]) -> None:
    """Print the mount path of a spec in the paper's notation.

    '//' is spelled '/@/' in the mount and ',NAME' becomes the last component.
    Files that share the name get one line each (their STEM~ID.EXT names).

    Example: cat "$(hk path //photo//animal/dog,fig1.jpg)"
    """
    with here() as h:
        for spec in specs:
            for p in spec_to_paths(h, spec):
                click.echo(p)


# ---------------------------------------------------------------------- kw

@cli.command("kw")
@click.argument("hk", required=False, metavar="[HK]")
@store_options
def kw_cmd(hk: str | None, store: str | None, user: str | None) -> None:
    """Print the keyword hierarchy (below HK) as a tree, each with its number of files.

    A count includes the files carrying a descendant keyword.

    Example: hk kw //SIG
    """
    with here(store, user) as h:
        root = h.keyword(hk) if hk else ()
        print_keyword_counts(h.store.keyword_counts(h.ns, root), root)


def print_keyword_counts(counts: Sequence[tuple[HK, int]], root: HK) -> None:
    """`hk kw`'s tree: each keyword below `root` indented by depth, with its number of files."""
    for k, n in counts:
        top = len(root) if root else 1
        depth = len(k) - top
        label = format_hk(k) if depth == 0 else "/" + k[-1]
        click.echo(f"{'  ' * depth}{label} ({n})")


# ---------------------------------------------------------------------- info

def _mode_text(mode: int) -> str:
    return stat.filemode(mode if stat.S_IFMT(mode) else mode | stat.S_IFREG)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _link_paths(h: Here, ref: FileRef) -> list[str]:
    out = []
    for dirid, name in h.store.links(ref.info.id):
        d = h.store.dir(dirid)
        path = h.store.dir_path(dirid).rstrip("/") + "/" + name
        if h.mount is not None and d.owner_ns == h.mount_ns:
            out.append(str(h.mount).rstrip("/") + path)
        else:
            out.append(f"{path} (in {h.store.namespace_user(d.owner_ns)}'s tree)")
    return out


@cli.command("info")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@store_options
def info_cmd(files: tuple[str, ...], store: str | None, user: str | None) -> None:
    """Print a file's entity id, name, HKs, links, owner, mode and size.

    FILE is a name in the current directory, a path, or a spec.

    Example: hk info ,main.tex
    """
    with here(store, user) as h:
        refs = h.all_files(files)
        for i, ref in enumerate(refs):
            e = ref.info
            if i:
                click.echo()
            print_info(FileFacts(e.id, e.name, format_hk_list(e.hks), _link_paths(h, ref), e.uid, e.gid,
                                 h.store.namespace_user(e.ns), e.mode, e.size))


@dataclass(frozen=True)
class FileFacts:
    """What `hk info` prints of one file (from the store, or through the mount)."""

    id: int
    name: str
    keywords: str
    links: list[str]
    uid: int
    gid: int
    namespace: str
    mode: int
    size: int


def print_info(f: FileFacts) -> None:
    click.echo(f"entity:    {f.id}")
    click.echo(f"name:      {f.name}")
    click.echo(f"keywords:  {f.keywords or '(none)'}")
    click.echo(f"links:     {f.links[0] if f.links else '(none)'}")
    for extra in f.links[1:]:
        click.echo(f"           {extra}")
    click.echo(f"owner:     {_user_name(f.uid)} (uid {f.uid}, gid {f.gid}); namespace {f.namespace}")
    click.echo(f"mode:      {_mode_text(f.mode)}")
    click.echo(f"size:      {f.size}")


# ---------------------------------------------------------------------- fsck

@cli.command("fsck")
@click.argument("store", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--repair", is_flag=True, help="Fix what is found (orphan bytes are kept in lost+found).")
def fsck_cmd(store: Path, repair: bool) -> None:
    """Check a store for inconsistencies between the catalog and the entity files.

    Finds orphan bytes files, rows without bytes, links and tags to missing
    entities, keywords with a missing parent, unreachable entities, unknown
    keywords in DKLs. Exit status 1 when problems remain. --repair refuses a
    mounted store (unmount it first); the check alone runs any time.

    Example: hk fsck ~/hkstore --repair
    """
    from ..core.fsck import REPORT_ONLY, check
    from ..core.fsck import repair as do_repair
    from ..core.store import Store

    if not (store / "catalog.sqlite").exists():
        raise click.ClickException(f"no hkfs store at {store}")
    with Store.open(store, create=False, readonly=not repair, repair=repair) as st:   # a check writes nothing
        if repair:
            try:
                st.lock()          # the mounting daemon holds it: repairs would race its writes
            except StoreLocked:
                raise click.ClickException(f"{store} is mounted (its daemon holds the lock); "
                                           "unmount it before --repair") from None
        problems = check(st)
        for p in problems:
            click.echo(str(p))
        if not problems:
            click.echo(f"{store}: clean")
            return
        by_hand = [p for p in problems if p.kind in REPORT_ONLY]
        if not repair:
            fixable = len(problems) - len(by_hand)
            if fixable:
                click.echo(f"{len(problems)} problem(s); run with --repair to fix "
                           + ("them" if not by_hand else f"{fixable} of them"), err=True)
            if by_hand:
                click.echo(f"{len(by_hand)} file(s) in {store}/entities are not entities: --repair leaves "
                           "them; move them out of the store by hand", err=True)
            sys.exit(1)
        for line in do_repair(st, problems):
            click.echo(f"repaired: {line}")
        left = check(st)
        for p in left:
            click.echo(f"still: {p}" + (" (move it out of the store by hand)" if p.kind in REPORT_ONLY else ""),
                       err=True)
        if left:
            sys.exit(1)
        click.echo(f"{store}: repaired, clean")


# ---------------------------------------------------------------------- prompt, completion, shell-init

@cli.command("prompt")
def prompt_cmd() -> None:
    """Print the CKL of the current directory (empty outside a mount); for the shell prompt.

    The paper shows the CKL in parentheses at the right of the prompt; the
    `hk shell-init` snippet puts it there.

    Example: PS1='\\u{\\W}> ' RPROMPT='($(hk prompt))'
    """
    try:
        with here() as h:
            click.echo(format_hk_list(h.ckl))
    except ThroughMount:
        raise                       # answered through the mount (hkfs.cli.through_mount)
    except (click.ClickException, HKError, OSError, Exception):   # a prompt never fails
        return


@cli.command("complete", hidden=True)
@click.argument("word", default="")
@store_options
def complete_cmd(word: str, store: str | None, user: str | None) -> None:
    """Print keyword completions of WORD, one per line (paper §4.1); used by the shell snippets."""
    try:
        with here(store, user) as h:
            keywords = h.store.keywords(h.ns)
    except ThroughMount:
        raise
    except Exception as exc:   # noqa: BLE001 - completion must never print an error into the command line
        log.debug("no completions for %r: %s", word, exc, exc_info=True)   # `hk -vv complete WORD` shows why
        return
    for c in complete_word(word, keywords):
        click.echo(c)


def snippet(shell: str, *, commands: bool = True, ls: bool = True, prompt: bool = True,
            ctrl_u: bool = False) -> str:
    """The shell-init text: sections between '# >>> NAME' and '# <<< NAME' are dropped when turned off."""
    shell_dir = resources.files("hkfs").joinpath("shell")
    common = shell_dir.joinpath("common.sh").read_text(encoding="utf-8")
    text = shell_dir.joinpath(f"hk.{shell}").read_text(encoding="utf-8").replace("@COMMON@\n", common)
    off = {"commands": not commands, "ls": not ls, "prompt": not prompt, "ctrl-u": not ctrl_u}
    out, skip = [], False
    for line in text.splitlines():
        if line.startswith("# >>> "):
            skip = off.get(line[6:].strip(), False)
            continue
        if line.startswith("# <<< "):
            skip = False
            continue
        if not skip:
            out.append(line)
    subs = " ".join(sorted(n for n, c in cli.commands.items() if not c.hidden))
    return ("\n".join(out) + "\n").replace("@SUBCOMMANDS@", subs).replace("@PAPER_COMMANDS@",
                                                                          " ".join(PAPER_COMMANDS))


@cli.command("shell-init")
@click.argument("shell", type=click.Choice(SHELLS))
@click.option("--no-commands", is_flag=True, help="Do not define the bare paper commands (akl, ldf, ...).")
@click.option("--no-ls", is_flag=True, help="Do not wrap ls (ls , and ls //a go to hk ls).")
@click.option("--no-prompt", is_flag=True, help="Do not show the CKL in the prompt.")
@click.option("--ctrl-u", is_flag=True,
              help="Ctrl-U cycles through keyword candidates, as in the paper (instead of erasing the line).")
def shell_init_cmd(shell: str, no_commands: bool, no_ls: bool, no_prompt: bool, ctrl_u: bool) -> None:
    """Print shell code that installs keyword completion, the paper's commands and the CKL prompt.

    Example: eval "$(hk shell-init bash --ctrl-u)"    # in ~/.bashrc; zsh: hk shell-init zsh
    """
    click.echo(snippet(shell, commands=not no_commands, ls=not no_ls, prompt=not no_prompt,
                       ctrl_u=ctrl_u), nl=False)

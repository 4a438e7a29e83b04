"""`hk` for users who cannot open the store: the read commands answered through the mount.

The store is private to its owner (docs/mount.md, "Users apart"), so another user's `hk`
in a shared mount (`allow_other`) cannot open the catalog. hkfs.cli.context then raises
ThroughMount and the `hk` group hands the command here: the read commands ask the mount
itself, with the caller's own rights. The kernel checks every directory and file
(`default_permissions`), the daemon leaves out of views what the caller's directories
hide (hkfs.mount.access), and what a path cannot say comes as attributes the daemon
answers: user.hk.dkl / user.hk.ns (a directory's CKL and namespace), user.hk.keywords,
user.hk.info (`hk info`: entity, name, namespace, the links the caller can reach),
user.hk.complete.WORD (Tab), user.hk.query (a stored query's body), user.hk.embedding.

Spec words are translated to mount paths as `hk path` does (`//a//b,x` -> `MNT/@/a/@/b/x`),
and views are read back from their listings: a file's entity id is its inode >> 2
(hkfs.mount.model), so a clash name `STEM~ID.EXT` is told from a file really named so.
Write commands get one line saying what works for other users. The owner never comes
here (the store opens for them), so nothing changes for the owner.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from ..core.completion import COMPLETE_ATTR
from ..core.errors import HKError, InvalidArgument, IsADirectory, NotFound, PermissionDenied
from ..core.naming import (
    HK,
    format_hk,
    format_hk_list,
    parse_hk,
    parse_hk_list,
    parse_spec,
    parse_typed_spec,
    split_clash_name,
    term_keyword,
)
from ..mount.paths import AT, COMMA, MountPath, parse
from ..mount.views import view_list
from .context import ThroughMount, mount_owner_uid

if TYPE_CHECKING:
    from .tools import FileFacts

__all__ = ["answer", "MountCwd", "READ_COMMANDS"]

# = hkfs.mount.model's, hkfs.mount.queryfs's, hkfs.query.embeddings' (tests check): importing
# those would load numpy into every `hk` command
KEYWORDS_ATTR, DKL_ATTR, NS_ATTR = "user.hk.keywords", "user.hk.dkl", "user.hk.ns"
INFO_ATTR, QUERY_ATTR, EMBEDDING_ATTR = "user.hk.info", "user.hk.query", "user.hk.embedding"
QUERY_SUFFIX = ".query"


def _failed(what: str, exc: OSError) -> HKError:
    """An OSError of the mount as the one-line error the store's commands give."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"{what}: no such file or keyword")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"permission denied: {what}")
    return InvalidArgument(f"{what}: {exc.strerror}")


def _attr(path: str, name: str, what: str) -> str | None:
    """An attribute the daemon answers (None when the file has none)."""
    try:
        return os.getxattr(path, name, follow_symlinks=False).decode("utf-8", "surrogateescape")
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise _failed(what, exc) from None


@dataclass(frozen=True)
class Listed:
    """A file as a view lists it: its listed name, its own name, its entity id."""

    listed: str
    name: str
    eid: int


def _scan(path: str, what: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as exc:
        raise _failed(what, exc) from None


def view_files(path: str, what: str) -> list[Listed]:
    """The files a view lists (its child keywords left out), with their own names."""
    out = []
    for e in _scan(path, what):
        if e.is_dir(follow_symlinks=False):
            continue                                    # a child keyword
        eid, listed = e.inode() >> 2, e.name
        if listed.startswith(COMMA):
            name = listed[1:]                           # ',NAME': a child keyword has the name
        else:
            split = split_clash_name(listed)
            name = split[0] if split is not None and split[1] == eid else listed
        out.append(Listed(listed, name, eid))
    return out


def child_keywords(path: str, what: str) -> list[str]:
    return sorted(e.name for e in _scan(path, what) if e.is_dir(follow_symlinks=False))


def counted(files: Sequence[Listed]) -> list[str]:
    """`ls ,`: a shared name once, with its count (as hkfs.cli.paper's listing)."""
    from .paper import _counted

    return _counted(dict(Counter(f.name for f in files)))


@dataclass
class MountCwd:
    """The current directory of a command answered through the mount."""

    mount: str           # the mount point, without a trailing '/'
    rel: str             # the cwd inside the mount: '/' or '/a/@/b'

    @classmethod
    def of(cls, tm: ThroughMount) -> MountCwd:
        mnt = str(tm.mount).rstrip("/")
        rel = tm.cwd[len(mnt):] or "/"
        return cls(mnt, rel)

    @cached_property
    def mp(self) -> MountPath:
        return parse(self.rel)

    @property
    def cwd(self) -> str:
        return self.mount + (self.rel if self.rel != "/" else "")

    @property
    def anchor(self) -> str:
        """The ordinary directory the cwd's keyword land starts from (the cwd itself in one)."""
        return self.mount + "".join("/" + p for p in self.mp.dir_parts)

    @property
    def in_dir(self) -> bool:
        return not self.mp.special

    @property
    def keyspace(self) -> bool:
        return self.mp.special and self.mp.adding

    def dkl(self, dirpath: str) -> tuple[HK, ...]:
        text = _attr(dirpath, DKL_ATTR, dirpath) or ""
        return parse_hk_list(text) if text else ()

    @cached_property
    def ckl(self) -> tuple[HK, ...]:
        """The current keyword list: the directory's DKL, or the view's own list."""
        if self.in_dir:
            return self.dkl(self.cwd)
        return view_list(self.mp, self.dkl(self.anchor))

    @property
    def other_ns(self) -> bool:
        """A directory whose namespace is not the mount's (chns)."""
        return self.in_dir and _attr(self.cwd, NS_ATTR, self.rel) != _attr(self.mount, NS_ATTR, "/")

    def keyword_path(self, kw: HK) -> str:
        return self.anchor + "/" + AT + "".join("/" + c for c in kw)

    def need_keywords(self, hl: Sequence[HK]) -> None:
        for term in hl:
            kw = term_keyword(term)
            if kw and not os.path.isdir(self.keyword_path(kw)):
                raise NotFound(f"no keyword {format_hk(term)}")

    def path_of(self, arg: str) -> str:
        """A bare name or a path, from the cwd (inside the mount)."""
        full = os.path.normpath(os.path.join(self.cwd or "/", arg))
        if full != self.mount and not full.startswith(self.mount + "/"):
            raise InvalidArgument(f"{arg!r} is not inside the mount {self.mount}")
        return full

    def spec_view(self, spec: str) -> tuple[str, tuple[HK, ...], str | None]:
        """The view path a spec names, its HKs as written (checked to exist), its name."""
        from .tools import spec_base

        hl, name = parse_typed_spec(spec, ())
        self.need_keywords(hl)
        base = spec_base(hl, spec.startswith(COMMA), cwd=self.cwd, mount=self.mount, in_dir=self.in_dir,
                         in_view=bool(self.ckl) and not self.in_dir and not self.keyspace,
                         other_ns=self.other_ns)
        return base, hl, name

    def spec_paths(self, spec: str) -> list[str]:
        """`hk path`: the mount paths of a spec (one per file while several share the name)."""
        if not spec.startswith((COMMA, "//")):
            return [os.path.normpath(os.path.join(self.cwd or "/", spec))]     # as the owner's hk path
        base, hl, name = self.spec_view(spec)
        if name is None:
            return [base]
        if spec.startswith(COMMA) and not hl and self.in_dir:
            return [self.cwd + "/" + COMMA + name]
        found = sorted((f for f in view_files(base, spec) if f.name == name), key=lambda f: f.eid)
        if found:
            return [base + "/" + f.listed for f in found]
        return [base + "/" + (COMMA + name if name in child_keywords(base, spec) else name)]

    def files(self, arg: str) -> list[str]:
        """The mount paths of the files a command-line word names (a spec: every match)."""
        if not arg.startswith((COMMA, "//")):
            if "/" not in arg:
                parse_spec(arg)
            return [self.path_of(arg)]
        base, _hl, name = self.spec_view(arg)
        found = [base + "/" + f.listed for f in view_files(base, arg) if name is None or f.name == name]
        if not found:
            raise NotFound(f"{arg}: no file matches")
        return found

    def listing(self, path: str, what: str) -> list[str]:
        """What `hk ls` shows of a directory, keyword space or view (a view: names with counts)."""
        mp = parse(path[len(self.mount):] or "/")
        if not mp.special:
            root = not mp.dir_parts
            return sorted(e.name for e in _scan(path, what) if not (root and e.name == AT))
        if mp.adding:
            return child_keywords(path, what)
        return counted(view_files(path, what))


# ---------------------------------------------------------------------- the read commands

def _ls(w: MountCwd, specs: Sequence[str], one: bool, **_: Any) -> None:
    from .paper import print_names

    names: list[str] = []
    for spec in specs or ("",):
        if spec == "":
            names += w.listing(w.cwd, w.rel)
        elif spec.startswith((COMMA, "//")):
            base, _hl, name = w.spec_view(spec)
            shown = counted([f for f in view_files(base, spec) if name is None or f.name == name])
            if name is not None and not shown:
                raise NotFound(f"{spec}: no file matches")
            names += shown
        else:
            path = w.path_of(spec)
            st = _lstat(path, spec)
            names += w.listing(path, spec) if stat.S_ISDIR(st.st_mode) else [_facts(w, path, spec, st).name]
    print_names(names, one_per_line=one)


def _path(w: MountCwd, specs: Sequence[str], **_: Any) -> None:
    for spec in specs:
        for p in w.spec_paths(spec):
            click.echo(p)


def _kw(w: MountCwd, hk: str | None, **_: Any) -> None:
    from .tools import print_keyword_counts

    if hk is not None and not hk.startswith("//"):
        raise InvalidArgument(f"{hk!r}: a keyword starts with '//'")
    root = parse_hk(hk) if hk else ()
    if root and not os.path.isdir(w.keyword_path(root)):
        raise NotFound(f"no keyword {format_hk(root)}")
    rows: list[tuple[HK, int]] = []

    def walk(kw: HK) -> None:
        path = w.keyword_path(kw)
        entries = _scan(path, format_hk(kw))
        rows.append((kw, sum(1 for e in entries if not e.is_dir(follow_symlinks=False))))
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                walk(kw + (e.name,))

    for top in ([root] if root else [(k,) for k in child_keywords(w.keyword_path(()), "@")]):
        walk(top)
    rows.sort(key=lambda r: "/" + "/".join(r[0]) + "/")          # the catalog's keyword order
    print_keyword_counts(rows, root)


def _lstat(path: str, what: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise _failed(what, exc) from None


def _facts(w: MountCwd, path: str, what: str, st: os.stat_result) -> FileFacts:
    """`hk info`'s facts of one file: its inode, and the daemon's user.hk.info and keywords."""
    from .tools import FileFacts

    if stat.S_ISDIR(st.st_mode):
        raise IsADirectory(f"{what}: is a directory")
    readable = not stat.S_ISLNK(st.st_mode)        # a symlink carries no user.* attributes
    info = json.loads(_attr(path, INFO_ATTR, what) or "{}") if readable else {}
    links = [w.mount + p if tree is None else f"{p} (in {tree}'s tree)" for p, tree in info.get("links", [])]
    return FileFacts(info.get("id", st.st_ino >> 2), info.get("name", os.path.basename(path)),
                     (_attr(path, KEYWORDS_ATTR, what) or "") if readable else "", links,
                     st.st_uid, st.st_gid, info.get("namespace", "?"), st.st_mode, st.st_size)


def _info(w: MountCwd, files: Sequence[str], **_: Any) -> None:
    from .tools import print_info

    seen: set[int] = set()
    for arg in files:
        for path in w.files(arg):
            f = _facts(w, path, arg, _lstat(path, arg))
            if f.id in seen:
                continue
            if seen:
                click.echo()
            seen.add(f.id)
            print_info(f)


def _query(w: MountCwd, spec: str | None, vector: str | None, like: str | None, k: int, nprobe: int | None,
           show: str | None, **_: Any) -> None:
    from ..query.queryfiles import DEFAULT_K

    if show is not None:
        if spec or vector is not None or like is not None:
            raise click.UsageError("--show takes no SPEC, --vector or --like")
        (path,) = _one(w, show)
        body = _attr(path, QUERY_ATTR, show)
        if body is None:
            raise InvalidArgument(f"{show} is not a stored query (NAME.query)")
        click.echo(body, nl=False)
        return
    if vector is not None or k != DEFAULT_K or nprobe is not None or like is None or "/" in like:
        raise click.ClickException(
            f"through the mount (the store is {_owner(w)}'s), hk query answers --like NAME (a file of "
            f"the current directory or of SPEC's view, k={DEFAULT_K}) and --show NAME.query; for other "
            "queries write a NAME.query file in a directory of yours and cat it")
    where = w.cwd
    if spec:
        where, _hl, name = w.spec_view(spec)
        if name is not None:
            raise InvalidArgument(f"{spec}: SPEC names a view, not a file (--like FILE)")
    try:
        with open(f"{where}/{like}{QUERY_SUFFIX}", "rb") as fh:
            out = fh.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise InvalidArgument(f"{like} has no embedding (not an entry, no {EMBEDDING_ATTR}) "
                                  "or is not here") from None
        raise _failed(like, exc) from None
    if not out:
        from ..mount.queryfs import NO_HITS

        click.echo(f"hk query: no hits: {NO_HITS}", err=True)
    click.echo(out.decode("utf-8", "surrogateescape"), nl=False)


def _one(w: MountCwd, arg: str) -> list[str]:
    found = w.files(arg)
    if len(found) > 1:
        raise InvalidArgument(f"{arg}: {len(found)} files match; give a spec that names one")
    return found


def _embed(w: MountCwd, file: str, show: bool, **_: Any) -> None:
    from ..query.embeddings import parse_embedding
    from ..query.queryfiles import format_vector

    if not show:
        _refuse("embed", w)
    (path,) = _one(w, file)
    raw = _attr(path, EMBEDDING_ATTR, file)
    if raw is None:
        raise click.ClickException(f"{file} has no embedding of its own")
    click.echo(format_vector(parse_embedding(raw.encode("utf-8", "surrogateescape"))), nl=False)


def _prompt(w: MountCwd, **_: Any) -> None:
    try:
        click.echo(format_hk_list(w.ckl))
    except Exception:          # noqa: BLE001 - a prompt never fails
        return


def _complete(w: MountCwd, word: str, **_: Any) -> None:
    try:
        text = _attr(w.cwd, COMPLETE_ATTR + word, w.rel) or ""
    except Exception:          # noqa: BLE001 - completion never prints an error into the command line
        return
    for c in text.split("\n"):
        if c:
            click.echo(c)


READ_COMMANDS: dict[str, Callable[..., None]] = {
    "ls": _ls, "path": _path, "kw": _kw, "info": _info, "query": _query, "embed": _embed,
    "prompt": _prompt, "complete": _complete,
}
# write commands whose effect a plain operation in the mount gives, within the caller's rights
_SAME_IN_THE_MOUNT = {
    "rm": "rm FILE in an ordinary directory of the mount does what hk rm does there",
    "ldf": "ln FILE DIR/ links a file into a directory of yours",
    "chfn": "mv renames a link in an ordinary directory (the file's own name stays)",
}


def _owner(w: MountCwd) -> str:
    uid = mount_owner_uid(w.mount)
    if uid is None:
        return "its owner"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _refuse(command: str, w: MountCwd) -> None:
    same = _SAME_IN_THE_MOUNT.get(command)
    raise click.ClickException(
        f"hk {command} changes the store, which is {_owner(w)}'s alone; other users read through the mount "
        "(hk ls, path, kw, info, query, embed --show, completion) and use mkdir, ln, mv and rm in its "
        "ordinary directories, within their rights" + (f"; {same}" if same else ""))


def answer(tm: ThroughMount) -> None:
    """Run the command `tm` interrupted through the mount (a read), or refuse it in one line."""
    w = MountCwd.of(tm)
    ctx = tm.ctx
    command = ctx.command.name if ctx is not None and ctx.command.name else "?"
    params = dict(ctx.params) if ctx is not None else {}
    if tm.user is not None:
        raise click.ClickException(f"--user needs the store, which is {_owner(w)}'s alone; through the "
                                   "mount hk answers for its own namespace only")
    run = READ_COMMANDS.get(command)
    if run is None:
        _refuse(command, w)
        return
    run(w, **params)

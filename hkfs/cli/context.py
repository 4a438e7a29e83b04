"""Where an `hk` command runs: the store, namespace, directory or view and CKL of the cwd.

The paper's commands act on "the current directory" and its CKL (the DKL of the
cwd). Inside a mount the cwd names a store object through the mount path grammar
(hkfs.mount.views); the store behind the mount is found from its fsname
`hkfs:<store>` (hkfs.fuse.mountinfo) and opened by this process (SQLite WAL is
multi-process safe), so no daemon protocol is needed. Outside a mount,
`--store` (and `--user`) name a store and the namespace's root directory plays
the current directory. Every command module shares this one place.
"""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from ..core.errors import (
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    PermissionDenied,
)
from ..core.naming import (
    HK,
    format_hk,
    parse_hk,
    parse_spec,
    parse_typed_hk_lists,
    parse_typed_spec,
)
from ..core.store import EntityInfo, Store
from ..fuse.mountinfo import find_mount, hk_mounts
from ..mount.views import DirLoc, KeySpaceLoc, LinkLoc, Location, Resolver, ViewFileLoc, ViewLoc

__all__ = [
    "Here", "here", "store_options", "mount_owner_uid", "FileRef", "ThroughMount",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def store_options(fn: F) -> F:
    """`--store` / `--user`: act on a store outside a mount (the namespace root is the cwd)."""
    fn = click.option("--user", "user", default=None, metavar="USER",
                      help="Namespace to use with --store (default: you).")(fn)
    fn = click.option("--store", "store", default=None, metavar="STORE",
                      type=click.Path(file_okay=False, path_type=Path),
                      help="Store directory, when not run inside an hkfs mount.")(fn)
    return fn



def mount_owner_uid(mountpoint: Path, proc_mounts: str = "/proc/self/mounts") -> int | None:
    """The `user_id=` option of a FUSE mount: the user whose namespace root is the mount root."""
    try:
        with open(proc_mounts, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 4 and fields[1].replace("\\040", " ") == str(mountpoint):
                    for opt in fields[3].split(","):
                        if opt.startswith("user_id="):
                            return int(opt[len("user_id="):])
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class FileRef:
    """A file named on the command line: its entity, and the directory link it was named by (if any)."""

    info: EntityInfo
    dirid: int | None = None          # the link (dirid, link_name) when named by a bare name/path
    link_name: str | None = None
    view: tuple[HK, ...] | None = None   # the view it was named in (rm there detaches)


@dataclass
class Here:
    """The cwd as the paper sees it. `dirid` is set in an ordinary directory, `view` in a view."""

    store: Store
    ns: int                            # the namespace ',' and keywords refer to here
    mount: Path | None                 # the mount point (None with --store)
    mount_ns: int                      # the namespace whose root is the mount root
    dirid: int | None
    view: tuple[HK, ...] | None
    rel: str                           # the cwd inside the mount ('/' with --store)
    keyspace: bool = False             # the cwd is a '@' keyword space (lists keywords, not files)

    @property
    def ckl(self) -> tuple[HK, ...]:
        """The current keyword list: the DKL of the cwd (a view's own list in a view)."""
        if self.dirid is not None:
            return self.store.dir(self.dirid).dkl
        return self.view or ()

    def need_dir(self, what: str) -> int:
        """The cwd's directory id, or a clear error for commands that change a directory."""
        if self.dirid is None:
            raise NotADirectory(f"{what} needs an ordinary directory; the current directory is a keyword view")
        return self.dirid

    def resolver(self) -> Resolver:
        return Resolver(self.store, self.mount_ns)

    # ----------------------------------------------------------------- permissions

    def require_own_ns(self, ns: int | None = None) -> None:
        """A user may change only their own namespace (root may change any)."""
        ns = self.ns if ns is None else ns
        if os.geteuid() == 0:
            return
        owner = self.store.namespace_user(ns)
        try:
            me = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            me = str(os.geteuid())
        if owner != me:
            raise PermissionDenied(f"permission denied: the namespace here is {owner}'s, not yours")

    def require_file_owner(self, info: EntityInfo) -> None:
        if os.geteuid() not in (0, info.uid):
            raise PermissionDenied(f"permission denied: {info.name} (entity {info.id}) is not yours")

    # ----------------------------------------------------------------- keywords

    def hks(self, texts: Sequence[str]) -> tuple[HK, ...]:
        """HK list arguments (',' means the CKL), checked to exist in this namespace."""
        hl = parse_typed_hk_lists(texts, self.ckl)
        for h in hl:
            if not self.store.keyword_exists(self.ns, h):
                raise NotFound(f"no keyword {format_hk(h)}")
        return hl

    def keyword(self, text: str) -> HK:
        if not text.startswith("//"):
            raise InvalidArgument(f"{text!r}: a keyword starts with '//'")
        return parse_hk(text)

    # ----------------------------------------------------------------- files

    def locate(self, arg: str) -> Location:
        """A bare name or a path, resolved through the mount path grammar from the cwd."""
        if self.mount is None:
            if "/" in arg:
                raise InvalidArgument(f"{arg!r}: paths need a mount (run inside one)")
            rel = "/" + arg if self.rel == "/" else self.rel + "/" + arg
        else:
            full = os.path.normpath(os.path.join(os.getcwd(), arg))
            found = find_mount(full)
            if found is None or found[0] != self.mount:
                raise InvalidArgument(f"{arg!r} is not inside the mount {self.mount}")
            rel = full[len(str(self.mount).rstrip("/")):] or "/"
        return self.resolver().resolve(rel)

    def _path_ref(self, arg: str) -> FileRef:
        loc = self.locate(arg)
        if isinstance(loc, LinkLoc):
            if loc.eid is None:
                raise NotFound(f"{arg}: no such file")
            return FileRef(self.store.entity(loc.eid), loc.dirid, loc.name)
        if isinstance(loc, ViewFileLoc):
            if loc.eid is None:
                raise NotFound(f"{arg}: no such file")
            return FileRef(self.store.entity(loc.eid), view=loc.view.hks)
        if isinstance(loc, (DirLoc, ViewLoc, KeySpaceLoc)):
            raise IsADirectory(f"{arg}: is a directory")
        raise NotFound(f"{arg}: no such file")

    def files(self, arg: str, *, many: bool = True, too_many: str = "give a spec that names one") -> list[FileRef]:
        """The files a command-line word names: a bare name or path (via the cwd), or a spec.

        ',NAME' / ',//c,NAME' / '//a//b,NAME' / '//a' name files by keywords; with
        many=False exactly one file must match (else an error ending with `too_many`).
        """
        if arg.startswith(",") or arg.startswith("//"):
            hl, name = parse_typed_spec(arg, self.ckl)
            for h in hl:
                if not self.store.keyword_exists(self.ns, h):
                    raise NotFound(f"no keyword {format_hk(h)}")
            found = [FileRef(i) for i in self.store.match(self.ns, hl, name)]
            if not found:
                raise NotFound(f"{arg}: no file matches")
        else:
            if "/" not in arg:
                parse_spec(arg)       # a bare name must be a valid file name
            found = [self._path_ref(arg)]
        if not many and len(found) > 1:
            raise InvalidArgument(f"{arg}: {len(found)} files match; {too_many}")
        return found

    def all_files(self, args: Sequence[str]) -> list[FileRef]:
        out: list[FileRef] = []
        seen: set[int] = set()
        for a in args:
            for ref in self.files(a):
                if ref.info.id not in seen:
                    seen.add(ref.info.id)
                    out.append(ref)
        return out


class ThroughMount(Exception):
    """The store behind the mount this command runs in (or names) is private to its owner:
    read commands answer through the mount instead, with the caller's own rights
    (hkfs.cli.through_mount; the `hk` group catches this and hands the command over)."""

    def __init__(self, mount: Path, cwd: str, user: str | None) -> None:
        super().__init__(f"the store behind {mount} is private to its owner")
        self.mount, self.cwd, self.user = mount, cwd, user
        self.ctx = click.get_current_context(silent=True)    # the command and its arguments


def _through(store_path: Path, cwd: str, user: str | None) -> ThroughMount | None:
    """A ThroughMount when a private store is mounted: run from inside the mount, or through
    its mount point when the command named the store (--store) from elsewhere."""
    found = find_mount(cwd)
    if found is not None and found[1] == store_path:
        return ThroughMount(found[0], os.path.abspath(cwd), user)
    for mnt, st in hk_mounts():
        if st == store_path:
            return ThroughMount(mnt, str(mnt), user)
    return None


def _open_store(path: Path) -> Store:
    private = PermissionDenied(f"permission denied: the store {path} is private to its owner; other users "
                               "use its mount (hk's read commands, ls, cat, getfattr -n user.hk.keywords)")
    try:
        if path.is_dir() and not os.access(path, os.X_OK):
            raise private   # a store is private to its owner (docs/mount.md, "Users apart"); not "no store here"
        found = (path / "catalog.sqlite").exists()
    except PermissionError:           # a directory on the way is not searchable
        raise private from None
    if not found:
        raise NotFound(f"no hkfs store at {path}")
    if not os.access(path / "catalog.sqlite", os.R_OK | os.W_OK):
        raise PermissionDenied(f"permission denied: cannot open the store {path}")
    return Store.open(path, create=False)



@contextmanager
def here(store: Path | None = None, user: str | None = None, *, cwd: str | None = None) -> Iterator[Here]:
    """The cwd's Here (closed on exit). Outside a mount without --store: a clear error."""
    cwd = cwd or os.getcwd()
    if store is not None:
        try:
            st = _open_store(Path(store).absolute())
        except PermissionDenied:
            through = _through(Path(store).absolute(), cwd, user)
            if through is None:
                raise
            raise through from None
        try:
            if user is not None and not st.known_user(user):
                raise InvalidArgument(f"no such user {user!r}")
            ns = st.namespace_id(user if user is not None else os.geteuid())
            yield Here(st, ns, None, ns, st.root_dir(ns), None, "/")
        finally:
            st.close()
        return
    found = find_mount(cwd)
    if found is None:
        raise click.ClickException("not inside an hkfs mount (cd into one, or give --store STORE)")
    mnt, store_path = found
    try:
        st = _open_store(store_path)
    except PermissionDenied:
        raise ThroughMount(mnt, os.path.abspath(cwd), None) from None
    try:
        uid = mount_owner_uid(mnt)
        mount_ns = st.namespace_id(uid if uid is not None else os.geteuid())
        rel = os.path.abspath(cwd)[len(str(mnt).rstrip("/")):] or "/"
        loc = Resolver(st, mount_ns).resolve(rel)
        if isinstance(loc, DirLoc):
            ns = st.dir(loc.dirid).ns
            h = Here(st, ns, mnt, mount_ns, loc.dirid, None, rel)
        elif isinstance(loc, ViewLoc):
            h = Here(st, loc.ns, mnt, mount_ns, None, tuple(loc.hks), rel)
        elif isinstance(loc, KeySpaceLoc):
            h = Here(st, loc.ns, mnt, mount_ns, None, tuple(loc.base), rel, keyspace=True)
        else:
            raise NotADirectory(f"{cwd} is not a directory")
        yield h
    finally:
        st.close()

"""Locations: which store object a mount path names (`Resolver`), and the view set rules.

The grammar is hkfs.mount.paths; `Resolver` asks the store (or the read memo)
and returns a `Location`. It knows nothing of FUSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..core.errors import NotADirectory, NotFound, NotPermitted
from ..core.naming import HK, has_operators, hk_matches, list_matches, term_keyword
from .paths import COMMA, MountPath, parse, split_clash_name

__all__ = [
    "Resolver", "DirLoc", "LinkLoc", "KeySpaceLoc", "ViewLoc", "ViewFileLoc", "NewKeyLoc", "Location",
    "detach_set", "attach_set", "view_children_of", "check_writable_view", "view_list",
]


def detach_set(carried: Sequence[HK], view: Sequence[HK]) -> list[HK]:
    """The HKs `rm` in a view takes off a file: each carried HK that some HK of the view matches."""
    check_writable_view(view)
    return [h for h in carried if any(hk_matches(q, h) for q in view)]


def attach_set(carried: Sequence[HK], view: Sequence[HK]) -> list[HK]:
    """The HKs `ln`/`mv` into a view attach: each view HK the file does not already satisfy."""
    check_writable_view(view)
    return [q for q in view if not any(hk_matches(q, h) for h in carried)]


# --- query operators (@or, @not, @only, @untagged: hkfs.core.naming) ----------------------
# Written after '@' like keywords (@/a/@/@or/b), so parse() needs nothing; these say what
# such a term means for the mount: its children, and that writes into it are refused.

def _term_keyword(term: HK) -> HK | None:
    """The keyword whose existence a term needs (() for a bare operator or @untagged: none);
    None when the term cannot be a view ('@untagged/NAME' names a file of @untagged)."""
    kw = term_keyword(term)
    if kw is None:
        return () if len(term) == 1 else None
    return kw


def view_children_of(hks: Sequence[HK]) -> HK | None:
    """The keyword whose children a view lists as directories (None: no child directories)."""
    return term_keyword(hks[-1]) if hks else ()


def check_writable_view(hks: Sequence[HK]) -> None:
    """Files cannot be tagged or untagged through a view with operators (which HKs would
    `touch` or `rm` there mean?): EPERM, before anything changes."""
    if has_operators(hks):
        raise NotPermitted("a view with @or/@not/@only/@untagged is read-only: tag files with hk atkw")


# --- locations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DirLoc:
    """An ordinary directory."""

    dirid: int


@dataclass(frozen=True)
class LinkLoc:
    """A name in an ordinary directory: a file link (eid) or nothing yet (eid None)."""

    dirid: int
    name: str
    eid: int | None


@dataclass(frozen=True)
class KeySpaceLoc:
    """'.../@': lists the top-level keywords; a new component starts another HK."""

    ns: int
    base: tuple[HK, ...]          # the HKs written before the '@' (DKL included for ',')
    anchor: int                   # the ordinary directory the path entered keyword land from

    @property
    def hks(self) -> tuple[HK, ...]:
        return self.base

    def child_hk(self, name: str) -> HK:
        return (name,)

    def with_child(self, name: str) -> tuple[HK, ...]:
        return self.base + ((name,),)


@dataclass(frozen=True)
class ViewLoc:
    """A view directory: the files matching `hks`; its listed children extend `hks[-1]`.

    `keyword` is True when the path's last component named the last HK's last
    keyword component (so rmdir removes that keyword).
    """

    ns: int
    hks: tuple[HK, ...]
    anchor: int
    keyword: bool = False

    def child_hk(self, name: str) -> HK:
        return (self.hks[-1] if self.hks else ()) + (name,)

    def with_child(self, name: str) -> tuple[HK, ...]:
        if not self.hks:
            return ((name,),)
        return self.hks[:-1] + (self.hks[-1] + (name,),)


@dataclass(frozen=True)
class ViewFileLoc:
    """A file of a view, by the name written: an entity (eid) or nothing yet (eid None)."""

    view: ViewLoc
    name: str                     # the real file name (a clash name is resolved to it)
    eid: int | None
    listed: str = field(default="")   # the component as written (clash name or ',NAME' included)


@dataclass(frozen=True)
class NewKeyLoc:
    """A component under '@' that is no keyword (yet): mkdir makes it, anything else is ENOENT."""

    parent: KeySpaceLoc
    name: str


Location = DirLoc | LinkLoc | KeySpaceLoc | ViewLoc | ViewFileLoc | NewKeyLoc


class StoreLike(Protocol):
    """What the resolver needs of hkfs.core.store.Store (a fake in unit tests)."""

    def root_dir(self, ns: int) -> int: ...
    def dir(self, dirid: int): ...
    def dir_naming(self, dirid: int) -> tuple[int, tuple[HK, ...]]: ...
    def lookup(self, dirid: int, name: str): ...
    def keyword_exists(self, ns: int, hk: HK) -> bool: ...
    def match(self, ns: int, hks: Sequence[HK], name: str | None = None) -> list: ...
    def entity(self, eid: int): ...


def view_list(mp: MountPath, dkl: Sequence[HK]) -> tuple[HK, ...]:
    """The HK list a special mount path names, given the DKL of the directory it starts from."""
    hks: tuple[HK, ...] = ()
    if mp.relative:
        hks = tuple(dkl)
        if mp.ext:
            hks = hks[:-1] + ((hks[-1] if hks else ()) + mp.ext,)
    return hks + mp.hks


class Resolver:
    """Maps mount paths to Locations by asking the store; holds no state between calls."""

    def __init__(self, store: StoreLike, ns: int) -> None:
        self.store = store
        self.ns = ns            # the mounting user's namespace: its root directory is '/'

    def walk_dirs(self, parts: Sequence[str], *, allow_file_tail: bool) -> DirLoc | LinkLoc:
        cur = self.store.root_dir(self.ns)
        for i, part in enumerate(parts):
            ent = self.store.lookup(cur, part)
            last = i == len(parts) - 1
            if ent is None:
                if last and allow_file_tail:
                    return LinkLoc(cur, part, None)
                raise NotFound(part)
            if ent.kind == "dir":
                cur = ent.id
                continue
            if last and allow_file_tail:
                return LinkLoc(cur, part, ent.id)
            raise NotADirectory(part)
        return DirLoc(cur)

    def resolve(self, path: str) -> Location:
        mp = parse(path)
        if not mp.special:
            return self.walk_dirs(mp.dir_parts, allow_file_tail=True)
        return self.resolve_special(mp)

    def resolve_special(self, mp: MountPath) -> Location:
        anchor = self.walk_dirs(mp.dir_parts, allow_file_tail=False)
        assert isinstance(anchor, DirLoc)
        ns, dkl = self.store.dir_naming(anchor.dirid)
        if mp.tail_ambiguous:
            view = self._list_of(mp, ns, dkl)
            if self._keywords_exist(ns, view, mp):
                return ViewLoc(ns, view, anchor.dirid, keyword=True)
            parent = mp.without_tail()
            parent_loc = self._view_of(parent, ns, dkl, anchor.dirid)
            if isinstance(parent_loc, KeySpaceLoc):
                return NewKeyLoc(parent_loc, mp.last or "")
            return self.file_in(parent_loc, mp.last or "")
        base = self._list_of(mp, ns, dkl)
        if not self._keywords_exist(ns, base, mp):
            raise NotFound("no such keyword")
        if mp.name is not None:
            view = ViewLoc(ns, base, anchor.dirid)
            return self.file_in(view, mp.name, listed=COMMA + mp.name)
        if mp.adding:
            return KeySpaceLoc(ns, base, anchor.dirid)
        return ViewLoc(ns, base, anchor.dirid)

    def _view_of(self, mp: MountPath, ns: int, dkl: tuple[HK, ...], anchor: int) -> KeySpaceLoc | ViewLoc:
        base = self._list_of(mp, ns, dkl)
        if not self._keywords_exist(ns, base, mp):
            raise NotFound("no such keyword")
        if mp.adding:
            return KeySpaceLoc(ns, base, anchor)
        return ViewLoc(ns, base, anchor)

    @staticmethod
    def _list_of(mp: MountPath, ns: int, dkl: tuple[HK, ...]) -> tuple[HK, ...]:
        return view_list(mp, dkl)

    def _keywords_exist(self, ns: int, hks: tuple[HK, ...], mp: MountPath) -> bool:
        # Only the HKs written in the path need checking; the DKL was checked when it was set.
        written = list(mp.hks)
        if mp.ext and hks:
            written.append(hks[len(hks) - len(mp.hks) - 1])
        kws = [_term_keyword(h) for h in written]
        return all(k is not None and self.store.keyword_exists(ns, k) for k in kws)

    def tail_in(self, view: ViewLoc, name: str) -> ViewLoc | ViewFileLoc:
        """resolve(P + '/' + name) where P names `view` by keyword components only (no ',', no
        trailing '@': see extends_by_tail) and `name` is a plain component (no leading ','):
        a child keyword of the view's last HK, else the file `name` among its matches. What
        resolve does with that path, without parsing and walking it again (a first
        `cat VIEW/FILE.query` asks for two names of the same view)."""
        kw = _term_keyword(view.with_child(name)[-1])
        if kw is not None and self.store.keyword_exists(view.ns, kw):
            return ViewLoc(view.ns, view.with_child(name), view.anchor, keyword=True)
        return self.file_in(view, name)

    @staticmethod
    def extends_by_tail(mp: MountPath) -> bool:
        """Whether a name appended to path mp extends its last HK (tail_in applies)."""
        return mp.special and bool(mp.hks) and not (mp.relative or mp.ext or mp.adding or mp.name is not None)

    def file_in(self, view: ViewLoc, name: str, listed: str = "") -> ViewFileLoc:
        """The file `name` (or clash name) among the view's matches; eid None when there is none."""
        listed = listed or name
        found = self.store.match(view.ns, view.hks, name)
        if len(found) == 1:
            return ViewFileLoc(view, name, found[0].id, listed)
        if len(found) > 1:
            own = self._own_file(view, found)
            if own is not None:
                return ViewFileLoc(view, name, own, listed)
            # Shared name: only the clash names STEM~ID.EXT name one of them.
            raise NotFound(f"{name}: {len(found)} files share this name here; use the listed names")
        split = split_clash_name(name)
        if split is not None:
            real, eid = split
            try:
                info = self.store.entity(eid)
            except NotFound:
                info = None
            if info is not None and info.ns == view.ns and info.name == real and \
                    list_matches(view.hks, info.hks):
                return ViewFileLoc(view, real, eid, listed)
        return ViewFileLoc(view, name, None, listed)

    def _own_file(self, view: ViewLoc, found: Sequence) -> int | None:
        """Among files sharing a name in a view, the one carrying the view's HKs themselves (not
        only descendants), when there is exactly one: a tree exported from the view and copied
        back (rsync, cp -a) names it by its plain name, so a second copy replaces it instead of
        failing with ENOENT."""
        if not view.hks or has_operators(view.hks):
            return None
        own = [f.id for f in found if all(h in self.store.entity(f.id).hks for h in view.hks)]
        return own[0] if len(own) == 1 else None


def int64s_of(column: bytes | str) -> np.ndarray:
    """Integers a store read gave as one value: packed native int64 (hkfs_int64s(),
    hkfs.core.aggregates; read-only) or text joined by ','."""
    return np.frombuffer(column, np.int64) if isinstance(column, bytes) else np.fromstring(column, np.int64, sep=",")


def view_ids(store: Any, ns: int, hks: Sequence[HK | str]) -> np.ndarray:
    """The sorted, distinct ids of a view's files as int64, read as one value
    (Store.match_ids_column): no Python int or list slot per file, ~40 MiB of transients at a
    million (the mount's listings and memo, the query layer's scopes)."""
    return np.unique(int64s_of(store.match_ids_column(ns, hks)))

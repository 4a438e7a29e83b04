"""Mount paths: their grammar (parse), their spelling (format) and the listed-name rule.

The only copy of each: the mount, its `.query` layer and the CLI name files through here.
The clash-name spelling itself (STEM~ID.EXT) lives in hkfs.core.naming, because the
store and fsck name lost+found entries with it too and the core imports nothing of the mount.

The kernel folds '//' into '/', so the paper's HK lists are spelled with '@'
components (docs/mount.md has the table):

    /a/b/c                 ordinary directories (and, last, a file link)
    D/@                    keyword space of D's namespace: lists top-level keywords
    D/@/photo/2000         the view //photo/2000: child keywords, then matching files
    D/@/photo/@/animal/dog the view //photo//animal/dog ('@' adds another HK)
    D/,                    the view of D's DKL (the CKL); D/,/@/c adds //c to it
    D/,main.tex  V/,NAME   a file among the list's matches (V/,NAME also when a child
                           keyword has the same name)
    V/STEM~ID.EXT          file ID while several files named STEM.EXT share the view

Parsing (`parse`) is pure: it cannot tell a child keyword from a file name, so the
last keyword component of a view path stays a *candidate*; hkfs.mount.views.Resolver
asks the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.errors import InvalidArgument, NotADirectory, NotFound
from ..core.naming import HK, clash_name, split_clash_name

__all__ = [
    "AT", "COMMA", "MountPath", "parse", "view_path", "clash_name", "split_clash_name", "listed_name",
    "view_prefix", "check_new_name", "link_count",
]

AT = "@"
COMMA = ","


@dataclass(frozen=True)
class MountPath:
    """A mount path taken apart by syntax alone.

    `dir_parts` are the ordinary directory names walked from the root (for a
    path with no '@' or ',' the last one may be a file link). When `special`
    is False nothing else is set. Otherwise the path enters keyword land from
    the directory `dir_parts`:

    - `relative`: it went through ',' (the list starts from that directory's DKL);
      `ext` are components after ',' that extend the DKL's last HK.
    - `hks`: HKs started by '@' (each a tuple of components).
    - `adding`: the path ends with '@' (keyword space: the next component starts an HK).
    - `name`: an explicit ',NAME' file; `tail_ambiguous`: the last component was written
      as a keyword component and may name a file of the view instead.
    """

    dir_parts: tuple[str, ...] = ()
    special: bool = False
    relative: bool = False
    ext: tuple[str, ...] = ()
    hks: tuple[HK, ...] = ()
    adding: bool = False
    name: str | None = None
    tail_ambiguous: bool = False

    @property
    def last(self) -> str | None:
        """The last keyword component written (the candidate file name)."""
        if self.hks:
            return self.hks[-1][-1]
        if self.ext:
            return self.ext[-1]
        return None

    def without_tail(self) -> MountPath:
        """The same path with its last keyword component dropped (the view a candidate file is in)."""
        if self.hks:
            last = self.hks[-1][:-1]
            hks = self.hks[:-1] + ((last,) if last else ())
            return MountPath(self.dir_parts, True, self.relative, self.ext, hks,
                             adding=not last, name=None, tail_ambiguous=False)
        return MountPath(self.dir_parts, True, self.relative, self.ext[:-1], (), False, None, False)


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def parse(path: str) -> MountPath:
    """Take a mount path ('/a/@/b/,c') apart; errors are ENOENT/ENOTDIR as the kernel would give.

    Raises NotFound for paths that can never name anything ('@' right after '@',
    a ',' inside a keyword list) and NotADirectory for components after ',NAME'.
    """
    parts = _components(path)
    dir_parts: list[str] = []
    i = 0
    n = len(parts)
    while i < n and parts[i] != AT and not parts[i].startswith(COMMA):
        dir_parts.append(parts[i])
        i += 1
    if i == n:
        return MountPath(tuple(dir_parts))
    relative = False
    ext: list[str] = []
    hks: list[list[str]] = []
    adding = False
    name: str | None = None
    p = parts[i]
    if p == AT:
        adding = True
    elif p == COMMA:
        relative = True
    else:  # ',NAME' right under the directory: a file of the CKL
        relative = True
        name = p[1:]
    i += 1
    if name is not None and i < n:
        raise NotADirectory(f"{path}: ',{name}' is a file")
    while i < n:
        p = parts[i]
        if p == AT:
            if adding:
                raise NotFound(f"{path}: '@' right after '@'")
            adding = True
        elif p.startswith(COMMA):
            if adding or p == COMMA:
                raise NotFound(f"{path}: ',' must follow a view")
            name = p[1:]
            if i + 1 < n:
                raise NotADirectory(f"{path}: ',{name}' is a file")
        elif adding:
            hks.append([p])
            adding = False
        elif hks:
            hks[-1].append(p)
        else:  # after ',' before any '@': extends the DKL's last HK
            ext.append(p)
        i += 1
    last = parts[-1]
    ambiguous = name is None and last not in (AT, COMMA) and not last.startswith(COMMA)
    return MountPath(tuple(dir_parts), True, relative, tuple(ext), tuple(tuple(h) for h in hks),
                     adding, name, ambiguous)


def listed_name(name: str, eid: int, *, shared: bool, keyword: bool) -> str:
    """How a view lists file `eid` named `name`: its clash name while the name is `shared`
    by several matches, ',NAME' while a child `keyword` has the name, else the name."""
    if shared:
        return clash_name(name, eid)
    return COMMA + name if keyword else name


def view_path(hks: Sequence[HK]) -> str:
    """An HK list as mount path components: ((photo,), (animal, dog)) -> '/@/photo/@/animal/dog'."""
    return "".join("/@/" + "/".join(h) for h in hks)


def view_prefix(hks: Sequence[HK]) -> str:
    """The same, relative and ending in '/' (a prefix for names in the view): '@/photo/@/animal/dog/'."""
    return view_path(hks)[1:] + "/" if hks else ""


def check_new_name(name: str) -> None:
    """Refuse names an ordinary directory or a view cannot hold ('@', ',NAME' are path syntax)."""
    if name == AT or name.startswith(COMMA):
        raise InvalidArgument(f"{name!r} is mount path syntax, not a file name")


def link_count(links: int, hks: int) -> int:
    """A file's st_nlink: its directory links plus one per HK it carries (each keyword is a
    name it is reached by: the views of that keyword), and at least 2 once it carries one.

    Tools rewrite a file with one link by writing a new file and renaming it over (vim's
    backupcopy=auto, ...); a file in a view must be written in place instead, because a new
    file made there would carry only that view's HKs (docs/mount.md, "Link counts").
    Untagged files count their directory links only, as on ext4."""
    return links + hks if not hks else max(2, links + hks)

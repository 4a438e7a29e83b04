"""Demo data for `make run`: a few dozen files under a small keyword hierarchy,
including the paper's LaTeX example (Figs. 1 and 2) and its completion example
(Figs. 3 and 4: //animal/dog/..., //food, //movie/footloose, //sports/football).
"""

from __future__ import annotations

import logging
import os

from ..core.errors import AlreadyExists
from ..core.naming import HK, parse_hk, parse_hk_list
from ..core.store import Store

__all__ = ["fill_demo", "fill_paper_home", "DEMO_KEYWORDS", "LATEX_PROJECTS", "PAPER_USER"]

log = logging.getLogger(__name__)

DEMO_KEYWORDS = [
    "//workshop", "//SIG/DPS", "//SIG/OS", "//society/IPSJ", "//society/ACM",
    "//photo", "//people", "//animal/cat", "//animal/dog/bulldog", "//animal/dog/poodle",
    "//animal/bird/crane", "//sports/football", "//sports/skate/figure", "//sports/soccer",
    "//movie/footloose", "//food", "//2000/August", "//travel/kyoto", "//doc/memo",
]

# The paper's example: three LaTeX projects with the same four file names, all //workshop.
LATEX_PROJECTS = {
    "dps": "//workshop//SIG/DPS//society/IPSJ",
    "os": "//workshop//SIG/OS",
    "acm": "//workshop//society/ACM",
}
LATEX_FILES = ("main.aux", "main.dvi", "main.log", "main.tex")

OTHER_FILES: list[tuple[str, str, str]] = [
    ("fig1.jpg", "//photo//people//animal/dog/bulldog", "bulldog with people"),
    ("fig2.jpg", "//photo//animal/dog/poodle", "a poodle"),
    ("tama.jpg", "//photo//animal/cat", "a cat called Tama"),
    ("mike.jpg", "//photo//animal/cat//travel/kyoto", "a cat in Kyoto"),
    ("crane.jpg", "//photo//animal/bird/crane//2000/August", "a crane, August 2000"),
    ("final.jpg", "//photo//sports/football", "a football final"),
    ("match.jpg", "//photo//sports/football//people", "football fans"),
    ("rink.jpg", "//photo//sports/skate/figure", "figure skating"),
    ("goal.jpg", "//photo//sports/soccer", "a goal"),
    ("kinkakuji.jpg", "//photo//travel/kyoto//2000/August", "Kinkaku-ji in August"),
    ("poster.jpg", "//photo//movie/footloose", "the Footloose poster"),
    ("footloose.txt", "//movie/footloose", "Footloose (1984), notes"),
    ("dance.txt", "//movie/footloose//sports/skate/figure", "dance scenes"),
    ("sushi.jpg", "//photo//food//travel/kyoto", "sushi in Kyoto"),
    ("recipe.txt", "//food", "a recipe"),
    ("rules.txt", "//sports/football", "the offside rule"),
    ("todo.txt", "//doc/memo", "things to do"),
    ("meeting.txt", "//doc/memo//workshop", "workshop meeting notes"),
    ("trip.txt", "//doc/memo//travel/kyoto", "Kyoto trip plan"),
    ("dogs.txt", "//animal/dog", "about dogs"),
]


def _latex(project: str, name: str) -> bytes:
    if name.endswith(".tex"):
        return (f"\\documentclass{{article}}\n\\title{{A {project.upper()} workshop paper}}\n"
                "\\begin{document}\n\\maketitle\nHierarchical keywords.\n\\end{document}\n").encode()
    return f"% {name} of the {project} paper (generated)\n".encode()


def _write(store: Store, eid: int, data: bytes) -> None:
    with open(store.entity_path(eid), "wb") as f:
        f.write(data)
    store.record_bytes(eid)


def fill_demo(store: Store, user: str | int | None = None) -> int:
    """Fill user's namespace (default: the current uid) with the demo; returns its id.

    Idempotent: a namespace that already has keywords is left alone."""
    ns = store.namespace_id(os.getuid() if user is None else user)
    if store.keywords(ns):
        log.info("namespace %d already has keywords; demo data not added", ns)
        return ns
    uid, gid = os.getuid(), os.getgid()
    for text in DEMO_KEYWORDS:
        store.mkkw(ns, parse_hk(text), parents=True)
    root = store.root_dir(ns)
    for project, hks in LATEX_PROJECTS.items():
        hl: tuple[HK, ...] = parse_hk_list(hks)
        for name in LATEX_FILES:
            eid = store.create(ns, name, hks=hl, uid=uid, gid=gid)
            _write(store, eid, _latex(project, name))
    for name, hks, text in OTHER_FILES:
        eid = store.create(ns, name, hks=parse_hk_list(hks), uid=uid, gid=gid)
        _write(store, eid, (text + "\n").encode())
    # Fig. 2's end state: a directory 'work' with DKL //workshop//SIG/DPS, loaded.
    work = store.mkdir(root, "work", uid=uid, gid=gid)
    store.akl(work, parse_hk_list("//workshop//SIG/DPS"))
    store.ldf(work)
    # An ordinary directory with a file that has no HK (plain UNIX use).
    notes = store.mkdir(root, "notes", uid=uid, gid=gid)
    eid = store.create(ns, "README.txt", directory=notes, uid=uid, gid=gid)
    _write(store, eid, b"An ordinary file in an ordinary directory; it has no keyword.\n")
    return ns


# The paper's figures are typed by user tada in his home directory (prompt `tada{tada}>`).
PAPER_USER = "tada"
PAPER_KEYWORDS = ("//society/IPSJ", "//SIG/DPS", "//SIG/OS", "//society/ACM", "//workshop")


def fill_paper_home(store: Store) -> bool:
    """The state before the paper's Fig. 1, in the directory `tada` of the mount root: its ','
    is tada's own namespace (chns), `tada/dps` holds the DPS paper's four LaTeX files with no
    keyword, and the OS and ACM papers' files already carry //workshop there. Made once, when
    tada's namespace does not exist yet (a replay changes it); returns whether it was made."""
    if any(user == PAPER_USER for _ns, user in store.namespaces()):
        return False
    uid, gid = os.getuid(), os.getgid()
    root = store.root_dir(store.namespace_id(uid))
    try:
        home = store.mkdir(root, PAPER_USER, uid=uid, gid=gid)
    except AlreadyExists:           # the user's own 'tada' is left alone
        log.info("%s exists in the mount root; the paper's home is not made", PAPER_USER)
        return False
    ns = store.namespace_id(PAPER_USER)   # made here: chns takes only users that exist already
    store.chns(home, PAPER_USER)
    for text in PAPER_KEYWORDS:
        store.mkkw(ns, parse_hk(text), parents=True)
    dps = store.mkdir(home, "dps", uid=uid, gid=gid)
    for name in LATEX_FILES:
        eid = store.create(ns, name, directory=dps, uid=uid, gid=gid)
        _write(store, eid, _latex("dps", name))
    for project in ("os", "acm"):
        hl = parse_hk_list(LATEX_PROJECTS[project])
        for name in LATEX_FILES:
            eid = store.create(ns, name, hks=hl, uid=uid, gid=gid)
            _write(store, eid, _latex(project, name))
    return True

"""`hk` commands run in a real shell inside a real mount: the cwd's directory or view is the context."""

from __future__ import annotations

import pytest
from conftest import Mount

pytestmark = pytest.mark.mount


def test_path_info_kw_and_views(demo_mount: Mount) -> None:
    r = demo_mount.run("""
        test "$(cat "$(hk path //photo//animal/dog/poodle,fig2.jpg)")" = "a poodle"
        test "$(hk path //photo//animal/dog/poodle,fig2.jpg)" = "$M/@/photo/@/animal/dog/poodle/fig2.jpg"
        hk path //workshop,main.tex | wc -l | grep -qx 3          # shared: one clash name each
        for p in $(hk path //workshop,main.tex); do test -f "$p"; done
        mkdir -p w && cd w
        hk akl //workshop//SIG/DPS
        test "$(hk prompt)" = "//workshop//SIG/DPS"
        test "$(hk path ,main.tex)" = "$M/w/,main.tex"
        test -f "$(hk path ,main.tex)"
        test "$(hk path ,//society)" = "$M/w/,/@/society"
        hk ldf
        hk info main.tex
        cd "$M/@/workshop/@/SIG/DPS"                            # a view: its list is the CKL
        test "$(hk prompt)" = "//workshop//SIG/DPS"
        hk ls
        test "$(hk ls ,)" = "main.aux main.dvi main.log main.tex"
        test "$(hk path ,main.tex)" = "$M/@/workshop/@/SIG/DPS/main.tex"   # ',' in a view, as hk ls ,
        test "$(cat "$(hk path ,main.tex)")" = "$(cat "$M/w/main.tex")"
        test "$(hk path ,//society,main.tex)" = "$M/@/workshop/@/SIG/DPS/@/society/main.tex"
        test -f "$(hk path ,//society,main.tex)"
        (cd "$M/@/workshop" && hk path ,main.tex | wc -l | grep -qx 3)   # shared: the clash names
        (cd "$M/@/workshop" && for p in $(hk path ,main.tex); do test -f "$p"; done)
        (cd "$M/@" && fails_with "needs a directory or a keyword view" hk path ,main.tex)
        hk rm main.log                                          # in a view: detaches the view's HKs
        test -e "$M/w/main.log"                                 # still linked in w
        test "$(getfattr --only-values -n user.hk.keywords "$M/w/main.log")" = "//society/IPSJ"
        cd "$M/@" && test "$(hk ls)" = "$(ls | tr '\\n' ' ' | sed 's/ $//')"   # '@': the top keywords
        cd "$M"
        hk kw //SIG
    """)
    out = r.stdout.splitlines()
    assert "name:      main.tex" in out
    assert any(ln.endswith("/w/main.tex") for ln in out)
    assert "main.aux main.dvi main.log main.tex" in out           # hk ls in the view (a pipe: one line)
    assert out[-3:] == ["//SIG (7)", "  /DPS (3)", "  /OS (4)"]


def test_chns_switches_the_namespace_of_comma(mount: Mount) -> None:
    mount.run("""
        mkdir -p @/mine d
        echo x > @/mine/a.txt
        cd d
        hk akl //mine
        test "$(hk ls ,)" = a.txt
        hk chns nobody                                  # a user of this system
        test -z "$(hk prompt)"                                  # the DKL was cleared
        test "$(hk akl //mine 2>&1)" = "Error: no keyword //mine"
        test "$(getfattr --only-values -n user.hk.ns .)" = nobody
        hk chns "$(id -un)"
        hk akl //mine && hk ldf && test "$(ls)" = a.txt
    """)


def test_errors_in_the_mount_are_one_line(mount: Mount) -> None:
    r = mount.run("""
        mkdir -p @/k d && cd d
        for args in "akl //none" "atkw //none x" "ls //k//none" "rm nofile" "ldf" "chfn nofile y" "akl k"; do
            if hk $args 2>err; then echo "unexpected success: $args"; exit 1; fi
            test "$(wc -l < err)" = 1 || { cat err; exit 1; }
            cat err
        done
        hk atkw //k 2>/dev/null || test $? = 2                  # a usage error: click's usage text, status 2
        cd "$M/@/k" && ! hk akl //k 2>"$M/d/err" && cat "$M/d/err"
    """)
    lines = r.stdout.splitlines()
    assert lines[0] == "Error: no keyword //none"
    assert "Error: nofile: no such file" in lines
    assert "Error: empty keyword list: nothing to load (add keywords with akl)" in lines
    assert lines[-1] == "Error: akl needs an ordinary directory; the current directory is a keyword view"


def test_a_query_with_no_other_embedding_says_why(mount: Mount) -> None:
    """One embedding alone: FILE.query reads empty (exit 0), and the log and `hk query` say why."""
    r = mount.run("""
        mkdir d
        "$PY" -c 'import numpy as np; np.save("d/a.npy", np.eye(3, dtype=np.float32)[:2])'
        test -z "$(cat d/a.npy.query)"
        cd d && hk query --like a.npy 2>&1 >/dev/null
    """)
    assert r.stdout == "hk query: no hits: no other file in its scope has an embedding\n"
    assert "/d/a.npy.query reads empty: no other file in its scope has an embedding" in mount.log.read_text()

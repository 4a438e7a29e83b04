"""Keyword completion (paper §4.1, Figs. 3 and 4) through the installed bash completion function.

bash sources `hk shell-init bash` and calls the function registered for the
command the way readline would: COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT
set, then the function, then COMPREPLY is read. The keywords come from the
namespace of the current directory, inside a real mount of the demo store.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Mount
from test_transcripts_shell import hk_bin

from hkfs.cli import cli
from hkfs.cli_tools import split_word
from hkfs.store import Store

COMP = r'''
eval "$(hk shell-init bash)"
comp() {
    local fn
    fn=$(complete -p "$1" | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
    COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    "$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    echo "${COMP_TYPE:+$COMP_TYPE }$* => ${COMPREPLY[*]}"
}
'''


def _complete(mount: Mount, tmp_path: Path, lines: str, cwd: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{hk_bin(tmp_path)}:{os.environ['PATH']}", LC_ALL="C.UTF-8")
    env.pop("HK_BIN", None)
    r = subprocess.run(["bash", "-c", COMP + lines], cwd=cwd or mount.root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = {}
    for ln in r.stdout.splitlines():
        k, _, v = ln.partition(" => ")
        out[k] = v
    return out


@pytest.mark.mount
def test_paper_completion_figs_3_and_4_in_bash(demo_mount: Mount, tmp_path: Path) -> None:
    got = _complete(demo_mount, tmp_path, """
        comp akl //animal/
        comp akl //animal/dog/
        comp akl //animal/dog/p
        comp akl foo
        comp akl foot
        comp akl //sports/football
        comp hk akl foot
        comp atkw //SIG/DPS,//wo
        comp atkw //workshop //so
        comp hk ak
        comp rkl ,//mov
        COMP_TYPE=9 comp akl foo          # first Tab: the word is kept (no '//' common prefix inserted)
        COMP_TYPE=37 comp akl foo         # menu-complete: cycles through the candidates (Fig. 4)
        COMP_TYPE=9 comp akl //animal/dog/
        complete -p akl ldf hk
    """)
    # Fig. 3: '//' mode walks one level at a time (same number of '/').
    assert got["akl //animal/"] == "//animal/bird //animal/cat //animal/dog"
    assert got["akl //animal/dog/"] == "//animal/dog/bulldog //animal/dog/poodle"
    assert got["akl //animal/dog/p"] == "//animal/dog/poodle"
    # Fig. 4: a word without '//' finds the HKs whose last component starts with it, anywhere.
    assert got["akl foo"] == "//food //movie/footloose //sports/football"
    assert got["akl foot"] == "//movie/footloose //sports/football"
    assert got["akl //sports/football"] == "//sports/football"
    assert got["hk akl foot"] == "//movie/footloose //sports/football"
    # The last HK of the paper's '//a,//b' list is completed; later atkw words are files (default).
    assert got["atkw //SIG/DPS,//wo"] == "//SIG/DPS,//workshop"
    assert got["atkw //workshop //so"] == ""
    assert got["hk ak"] == "akl"
    assert got["rkl ,//mov"] == ",//movie"
    assert got["9 akl foo"] == "//food //movie/footloose //sports/football foo"
    assert got["37 akl foo"] == "//food //movie/footloose //sports/football"
    assert got["9 akl //animal/dog/"] == "//animal/dog/bulldog //animal/dog/poodle"


@pytest.mark.mount
def test_completion_uses_the_namespace_of_the_current_directory(demo_mount: Mount, tmp_path: Path) -> None:
    demo_mount.run("mkdir other && cd other && hk chns nobody-else")
    got = _complete(demo_mount, tmp_path, "comp akl foo\n", cwd=demo_mount.root / "other")
    assert got["akl foo"] == ""          # nobody-else has no keywords
    got = _complete(demo_mount, tmp_path, "comp akl foo\n")
    assert got["akl foo"] == "//food //movie/footloose //sports/football"


def test_split_word() -> None:
    assert split_word("//animal/d") == ("", "//animal/d")
    assert split_word("//SIG/DPS,//wo") == ("//SIG/DPS,", "//wo")
    assert split_word("//a//b/c") == ("//a", "//b/c")
    assert split_word(",foo") == (",", "foo")
    assert split_word("foo") == ("", "foo")


def test_hk_complete_with_a_store_outside_a_mount(tmp_path: Path) -> None:
    store = tmp_path / "s"
    r = CliRunner()
    res = r.invoke(cli, ["mkkw", "--store", str(store), "//food"])
    assert res.exit_code == 1 and "no hkfs store" in res.output
    Store.open(store).close()
    res = r.invoke(cli, ["mkkw", "--store", str(store), "-p", "//sports/football", "//movie/footloose", "//food"])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["complete", "--store", str(store), "--", "foot"])
    assert res.output.split() == ["//movie/footloose", "//sports/football"]
    res = r.invoke(cli, ["complete", "--store", str(store), "--", "//s"])
    assert res.output.split() == ["//sports"]
    res = r.invoke(cli, ["complete", "--", "foot"])       # no mount, no store: silent
    assert res.exit_code == 0 and res.output == ""


@pytest.mark.mount
def test_tab_in_a_real_readline(demo_mount: Mount, tmp_path: Path) -> None:
    """Keys typed into an interactive bash with readline on a pty: Tab does what Figs. 3-4 show."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    rc = tmp_path / "rc"
    rc.write_text("PS1='P>'\nPROMPT_COMMAND=\neval \"$(hk shell-init bash --no-prompt)\"\n")
    env = dict(os.environ, PATH=f"{hk_bin(tmp_path)}:{os.environ['PATH']}", TERM="dumb", HOME=str(tmp_path),
               INPUTRC=str(tmp_path / "inputrc"))
    (tmp_path / "inputrc").write_text("")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(["bash", "--rcfile", str(rc), "-i"], stdin=slave, stdout=slave, stderr=slave,
                            cwd=demo_mount.root, env=env, start_new_session=True)
    os.close(slave)

    buf = bytearray()

    def until(pattern: bytes, start: int, timeout: float = 60) -> bytes:
        """Read until `pattern` appears in what came after `start`; return that part."""
        end = time.monotonic() + timeout
        while pattern not in buf[start:]:
            assert time.monotonic() < end and proc.poll() is None, bytes(buf[start:])
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                buf.extend(os.read(master, 65536))
        return bytes(buf[start:])

    def keys(k: bytes) -> int:
        mark = len(buf)
        os.write(master, k)
        return mark

    try:
        until(b"P>", 0)
        until(b"//sports/football", keys(b"akl footb\t"))      # one candidate: the word is replaced
        out = until(b"//animal/dog/poodle", keys(b"\x15akl //animal/dog/\t\t"))   # Fig. 3: next level listed
        assert b"//animal/dog/bulldog" in out
        m = keys(b"\x15akl foo\t\t")                          # Fig. 4: listed, and 'foo' stays typed
        out = until(b"//sports/football", m)
        assert b"//food" in out and b"//movie/footloose" in out
        until(b"P>akl foo", m + out.index(b"//sports/football"))   # redrawn with the word kept
        os.write(master, b"\x15exit\n")
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)

"""Keyword completion (paper §4.1, Figs. 3 and 4) through the installed bash completion function.

bash sources `hk shell-init bash` and calls the function registered for the
command the way readline would: COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT
set, then the function, then COMPREPLY is read. The keywords come from the
namespace of the current directory, inside a real mount of the demo store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Mount
from ptyterm import PtyProcess
from test_transcripts_shell import hk_bin

from hkfs.cli.main import cli
from hkfs.core.completion import split_word
from hkfs.core.store import Store

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
                       capture_output=True, text=True, timeout=400)   # ~15 hk start-ups
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
    demo_mount.run("mkdir other && cd other && hk chns nobody")
    got = _complete(demo_mount, tmp_path, "comp akl foo\n", cwd=demo_mount.root / "other")
    assert got["akl foo"] == ""          # nobody has no keywords
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


class KeyTerminal(PtyProcess):
    """An interactive shell on an 80-column pty; `keys` types, `until` reads until a pattern shows.

    Each step of a test waits for the last thing the shell writes for that key (the redrawn line,
    a bell), and `keys` first takes in whatever is already pending, so the next step never matches
    output left over from the one before, however slowly the shell runs on a loaded machine.
    """

    STEP_TIMEOUT = 120.0    # one step is one `hk complete` (a Python start-up); generous for loaded CI

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], mount: Mount) -> None:
        super().__init__(argv, cwd, env)
        self.mount = mount

    def until(self, pattern: bytes, start: int = 0, timeout: float = STEP_TIMEOUT) -> bytes:
        """Read until `pattern` appears in what came after `start`; return that part."""
        end = time.monotonic() + timeout
        while pattern not in self.buf[start:]:
            if time.monotonic() > end or self.proc.poll() is not None:
                pytest.fail(f"{pattern!r} not shown within {timeout:.0f}s (shell exit code "
                            f"{self.proc.poll()}); after the keys:\n{bytes(self.buf[start:])!r}\n"
                            f"--- whole terminal\n{bytes(self.buf)!r}\n--- daemon.log tail\n"
                            f"{self.mount.log_tail()}")
            self.read(0.5)
        return bytes(self.buf[start:])

    def keys(self, k: bytes) -> int:
        """Type k; returns the mark from which its output starts (what was pending is taken in first)."""
        while self.read(0):
            pass
        mark = len(self.buf)
        self.write(k)
        return mark

    def close(self, goodbye: bytes = b"\x15exit\n") -> None:     # Ctrl-U first: a half-typed line
        super().close(goodbye)


def _shell(shell: str, mount: Mount, tmp_path: Path) -> KeyTerminal:
    env = dict(os.environ, PATH=f"{hk_bin(tmp_path)}:{os.environ['PATH']}", TERM="dumb", HOME=str(tmp_path),
               INPUTRC=str(tmp_path / "inputrc"), ZDOTDIR=str(tmp_path))
    (tmp_path / "inputrc").write_text("")
    if shell == "bash":
        rc = tmp_path / "rc"
        rc.write_text("PS1='P>'\nPROMPT_COMMAND=\neval \"$(hk shell-init bash --no-prompt)\"\n")
        argv = ["bash", "--rcfile", str(rc), "-i"]
    else:
        (tmp_path / ".zshrc").write_text("PS1='P>'\nautoload -Uz compinit && compinit -u\n"
                                         "eval \"$(hk shell-init zsh --no-prompt)\"\n")
        argv = ["zsh", "-i"]
    t = KeyTerminal(argv, mount.root, env, mount)
    t.until(b"P>")
    return t


@pytest.mark.mount
@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_tab_in_a_real_shell(shell: str, demo_mount: Mount, tmp_path: Path) -> None:
    """Keys typed into an interactive bash (readline) or zsh (zle) on a pty: Tab does what Figs. 3-4 show."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    t = _shell(shell, demo_mount, tmp_path)
    try:
        # One candidate: the word is replaced.
        t.until(b"//sports/football", t.keys(b"akl footb\t"))
        # Fig. 3: the next level. bash keeps the word (bell) and lists on the second Tab;
        # zsh lists on the first Tab, and the second starts the menu at the first candidate.
        m = t.keys(b"\x15akl //animal/dog/\t")
        if shell == "bash":
            t.until(b"P>akl //animal/dog/\x07", m)
            m = t.keys(b"\t")
        # zsh lists them as the paper shows them: the completed part in parentheses.
        poodle, bulldog = ((b"//animal/dog/(poodle)", b"//animal/dog/(bulldog)") if shell == "zsh"
                           else (b"//animal/dog/poodle", b"//animal/dog/bulldog"))
        out = t.until(poodle, m)
        assert bulldog in out
        t.until(b"P>akl //animal/dog/", m + out.index(poodle))   # line redrawn, word kept
        if shell == "zsh":
            t.until(b"bulldog", t.keys(b"\t"))
        if shell == "bash":                                       # Fig. 4: listed, 'foo' stays typed
            t.until(b"P>akl foo\x07", t.keys(b"\x15akl foo\t"))   # first Tab: the word is kept
            m = t.keys(b"\t")
            out = t.until(b"//sports/football", m)
            assert b"//food" in out and b"//movie/footloose" in out
            t.until(b"P>akl foo", m + out.index(b"//sports/football"))
        else:                                                     # Fig. 4: Tab cycles, as Ctrl-U did
            out = t.until(b"P>akl //food", t.keys(b"\x15akl foo\t"))   # first candidate in, all listed
            assert b"(//)foo(d)" in out and b"(//movie/)foo(tloose)" in out and b"(//sports/)foo(tball)" in out
            t.until(b"movie/footloose", t.keys(b"\t"))
            t.until(b"akl //sports/football", t.keys(b"\t"))
            t.until(b"akl //food", t.keys(b"\t"))                  # and round again
    finally:
        t.close()


@pytest.mark.mount
@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_ctrl_u_cycles_as_in_the_paper(shell: str, demo_mount: Mount, tmp_path: Path) -> None:
    """`hk shell-init SHELL --ctrl-u`: each Ctrl-U typed on a pty puts the next candidate in
    (Figs. 3-4). HK_BIN names no command: the candidates come from the daemon (getfattr of
    user.hk.complete.WORD), never from a Python start-up."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    env = dict(os.environ, PATH=f"{hk_bin(tmp_path)}:{os.environ['PATH']}", TERM="dumb", HOME=str(tmp_path),
               INPUTRC=str(tmp_path / "inputrc"), ZDOTDIR=str(tmp_path))
    (tmp_path / "inputrc").write_text("")
    init = (f'eval "$(hk shell-init {shell} --no-prompt --ctrl-u)"\n'
            "HK_BIN=/nonexistent/hk\n"
            "akl() { echo \"ARGS:$*\"; }\n")                        # shows the line as typed
    if shell == "bash":
        (tmp_path / "rc").write_text("PS1='P>'\nPROMPT_COMMAND=\n" + init)
        argv = ["bash", "--rcfile", str(tmp_path / "rc"), "-i"]
    else:
        (tmp_path / ".zshrc").write_text("PS1='P>'\nautoload -Uz compinit && compinit -u\n" + init)
        argv = ["zsh", "-i"]
    t = KeyTerminal(argv, demo_mount.root, env, demo_mount)
    try:
        t.until(b"P>")
        m = t.keys(b"akl foo\x15")                                          # Fig. 4
        t.until(b"//food", m)
        if shell == "zsh":                    # the list shows the added parts as the paper does
            out = t.until(b"(//sports/)foo(tball)", m)
            assert b"(//)foo(d)" in out and b"(//movie/)foo(tloose)" in out
        t.until(b"footloose", t.keys(b"\x15"))
        t.until(b"football", t.keys(b"\x15"))
        m = t.keys(b"\n")
        out = t.until(b"ARGS://sports/football", m)
        # The next prompt first: a Ctrl-U typed ahead reaches the tty in line mode (its kill char).
        t.until(b"P>", m + out.index(b"ARGS:"))
        t.until(b"//animal/bird", t.keys(b"akl //animal/\x15"))             # Fig. 3
        t.until(b"cat", t.keys(b"\x15"))
        t.until(b"dog", t.keys(b"\x15"))
        t.until(b"bulldog", t.keys(b"/\x15"))                              # the next level
        t.until(b"poodle", t.keys(b"\x15"))
        t.until(b"ARGS://animal/dog/poodle", t.keys(b"\n"))
    finally:
        t.close(b"exit\n")


@pytest.mark.mount
def test_the_mount_serves_completions_as_an_attribute(demo_mount: Mount) -> None:
    """getfattr -n user.hk.complete.WORD DIR: WORD's candidates in DIR's namespace, as `hk complete`."""
    r = demo_mount.run("""
        c() { getfattr --only-values -n "user.hk.complete.$1" "${2:-.}"; echo; }
        c foot
        c //animal/dog/
        c '//SIG/DPS,//wo'
        c ,//mov work                                   # a directory
        c foot @/photo/@/animal                         # a view: its namespace
        mkdir other && (cd other && hk chns nobody)                   # a user with no keywords
        c foot other                                    # another namespace: none
        test "$(hk complete -- foot | tr '\\n' ' ')" = "//movie/footloose //sports/football "
        not getfattr -n user.hk.complete.foot @/photo/fig2.jpg 2>/dev/null    # a file: no attribute
        getfattr -d . | grep -c complete || true        # not listed (one attribute per word)
    """)
    assert r.stdout.split("\n") == [
        "//movie/footloose", "//sports/football",
        "//animal/dog/bulldog", "//animal/dog/poodle",
        "//SIG/DPS,//workshop",
        ",//movie",
        "//movie/footloose", "//sports/football",
        "",
        "0", ""]

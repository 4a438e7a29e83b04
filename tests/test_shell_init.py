"""`hk shell-init bash|zsh`: the snippets parse, their sections can be left out, and in zsh the
completion function and right prompt work (bash's are driven in test_shell_completion.py and
test_transcripts_shell.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Mount
from test_transcripts_shell import hk_bin

from hkfs.cli.main import cli
from hkfs.cli.tools import PAPER_COMMANDS


def _init(shell: str, *opts: str) -> str:
    r = CliRunner().invoke(cli, ["shell-init", shell, *opts])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_snippet_parses_and_sections_can_be_left_out(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    full = _init(shell)
    assert "@" + "SUBCOMMANDS@" not in full and "@PAPER_COMMANDS@" not in full and "@COMMON@" not in full
    assert " ".join(PAPER_COMMANDS) in full
    for opts in [(), ("--no-ls",), ("--no-prompt",), ("--no-commands",), ("--no-ls", "--no-prompt", "--no-commands")]:
        text = _init(shell, *opts)
        f = tmp_path / f"snippet.{shell}"
        f.write_text(text)
        r = subprocess.run([shell, "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (opts, r.stderr)
        assert ("ls() {" in text) == ("--no-ls" not in opts)
        assert ("_hk_hkfs_precmd" in text) == ("--no-prompt" not in opts)
        assert ("for _hk_c in" in text) == ("--no-commands" not in opts)
    assert "complete -o default -F _hk_hkfs_complete hk mkkw" in _init("bash")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_functions_are_defined_even_over_aliases(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    env = dict(os.environ, PATH=f"{hk_bin(tmp_path)}:{os.environ['PATH']}", HOME=str(tmp_path),
               ZDOTDIR=str(tmp_path))
    script = (("shopt -s expand_aliases\n" if shell == "bash" else "")
              + "alias ls='ls --color=auto' akl='echo no'\n"
              + f'eval "$(hk shell-init {shell})"\n'
              + "unalias ls akl\n"
              + ("type -t akl ldf ls rme\n" if shell == "bash" else "whence -w akl ldf ls rme\n"))
    r = subprocess.run([shell, "-f", "-c", script] if shell == "zsh" else [shell, "-c", script],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() in (["function"] * 4, ["akl:", "function", "ldf:", "function", "ls:", "function",
                                                   "rme:", "function"]), r.stdout


# Drives the completion function outside a widget: compadd/_files are stubbed to print, and
# comp() gives each call fresh words/CURRENT and its own `compstate` association (zsh makes
# these specials only inside a completion widget; as plain locals they are seen by the function
# through dynamic scope). The real widget is driven on a pty in test_shell_completion.py.
ZSH_DRIVER = r'''
eval "$(hk shell-init zsh)"
print -r -- "comps: $_comps[akl] $_comps[hk]"
compadd() { while [[ $1 != -- ]]; do shift; done; shift; print -r -- "cands: $*"; }
_files() { print -r -- "files"; }
comp() { local -A compstate; local -a words=("$@"); local CURRENT=$#
         _hk_hkfs_zcomplete; print -r -- "insert: ${compstate[insert]-}"; }
comp akl foo
comp akl //animal/dog/
comp atkw //workshop mai
comp hk akl foot
mkdir -p w; cd w; hk akl //workshop
_hk_hkfs_precmd
print -r -- "rprompt: ${(%)${(e)RPROMPT}}"
'''


@pytest.mark.mount
def test_zsh_completion_and_right_prompt(demo_mount: Mount, tmp_path: Path) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")
    env = dict(os.environ, PATH=f"{hk_bin(tmp_path)}:{os.environ['PATH']}", HOME=str(tmp_path),
               ZDOTDIR=str(tmp_path))
    r = subprocess.run(["zsh", "-f", "-c", ZSH_DRIVER], capture_output=True, text=True, env=env,
                       cwd=demo_mount.root, timeout=300)
    why = f"--- stdout\n{r.stdout}--- stderr\n{r.stderr}--- daemon.log tail\n{demo_mount.log_tail()}"
    assert r.returncode == 0 and "_hk_hkfs" not in r.stderr, why      # no error from the snippet's functions
    lines = r.stdout.splitlines()
    assert lines[0] == "comps: _hk_hkfs_zcomplete _hk_hkfs_zcomplete", why
    # Mode 2 cycles through the candidates (menu), as the paper's Ctrl-U; mode 1 completes normally.
    assert lines[1:3] == ["cands: //food //movie/footloose //sports/football", "insert: menu"], why
    assert lines[3:5] == ["cands: //animal/dog/bulldog //animal/dog/poodle", "insert: "], why
    assert lines[5:7] == ["files", "insert: "], why
    assert lines[7:9] == ["cands: //movie/footloose //sports/football", "insert: menu"], why
    assert "rprompt: (//workshop)" in lines, why


LS_DRIVER = r'''
eval "$(hk shell-init SHELL)"
cd work
echo "plain: $(ls , | tr '\n' ' ')"
echo "one: $(ls -1 , | tr '\n' ' ')"
echo "long: $(ls -l , | grep -c '^-rw')"
echo "long-names: $(ls -l , | awk '{print $NF}' | tr '\n' ' ')"
echo "dir: $(ls -d //workshop)"
echo "shared: $(ls -d //workshop,main.tex | wc -l)"
echo "system: $(ls -a | head -1)"
ls -l //nope 2>&1 || echo "refused: $?"
'''


@pytest.mark.mount
@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_ls_wrapper_passes_options_through(shell: str, demo_mount: Mount, tmp_path: Path) -> None:
    """`ls -l ,`: options hk ls does not know go to the system ls, on the specs' mount paths."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    env = dict(os.environ, PATH=f"{hk_bin(tmp_path)}:{os.environ['PATH']}", HOME=str(tmp_path),
               ZDOTDIR=str(tmp_path))
    argv = ["zsh", "-f", "-c"] if shell == "zsh" else ["bash", "-c"]
    r = subprocess.run(argv + [LS_DRIVER.replace("SHELL", shell)], capture_output=True, text=True,
                       env=env, cwd=demo_mount.root, timeout=300)
    out = dict(ln.split(": ", 1) for ln in r.stdout.splitlines() if ": " in ln)
    why = f"{r.stdout}\n{r.stderr}"
    assert out["plain"] == "main.aux main.dvi main.log main.tex ", why      # hk ls
    assert out["one"] == "main.aux main.dvi main.log main.tex ", why
    assert out["long"] == "4", why                                         # ls -l of work/,
    assert out["long-names"].split()[1:] == ["main.aux", "main.dvi", "main.log", "main.tex"], why
    assert out["dir"] == f"{demo_mount.root}/@/workshop", why
    assert out["shared"] == "3", why                                       # the three clash names
    assert out["system"] == ".", why
    assert "no keyword //nope" in r.stdout and "refused: 1" in r.stdout, why

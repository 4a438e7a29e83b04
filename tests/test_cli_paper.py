"""The paper's commands through click's CliRunner, on a store named with --store (no mount).

Outside a mount the namespace's root directory plays the current directory, so
the paper's Figs. 1-2 run here too; the real-shell replay on a mount is
tests/test_transcripts_shell.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hkfs.cli.main import cli
from hkfs.cli.paper import format_columns
from hkfs.core.errors import HKSyntaxError, InvalidArgument
from hkfs.core.naming import (
    parse_hk,
    parse_typed_hk_list,
)
from hkfs.core.store import Store

TEX = ["main.aux", "main.dvi", "main.log", "main.tex"]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Three LaTeX projects' files: dps's untagged in the root directory, os's and acm's tagged //workshop."""
    path = tmp_path / "store"
    with Store.open(path) as s:
        ns = s.namespace_id(os.geteuid())
        for hk in ("//society/IPSJ", "//SIG/DPS", "//SIG/OS", "//society/ACM", "//workshop"):
            s.mkkw(ns, parse_hk(hk), parents=True)
        root = s.root_dir(ns)
        for n in TEX:
            s.entity_path(s.create(ns, n, directory=root)).write_text("dps " + n)
            s.create(ns, n, hks=[parse_hk("//workshop"), parse_hk("//SIG/OS")])
            s.create(ns, n, hks=[parse_hk("//workshop"), parse_hk("//society/ACM")])
    return path


def hk(store: Path, *args: str) -> tuple[int, str]:
    """Run `hk ARGS --store STORE` (the option after the subcommand); (exit code, stdout+stderr)."""
    cmd, rest = args[0], list(args[1:])
    r = CliRunner().invoke(cli, [cmd, "--store", str(store), *rest])
    return r.exit_code, r.output


def test_paper_figs_1_and_2_with_store(store: Path) -> None:
    assert hk(store, "ls") == (0, "main.aux main.dvi main.log main.tex\n")
    assert hk(store, "atkw", "//society/IPSJ", *TEX) == (0, "")
    assert hk(store, "atkw", "//SIG/DPS,//workshop", *TEX) == (0, "")
    assert hk(store, "rm", *TEX) == (0, "")
    assert hk(store, "ls") == (0, "")
    assert hk(store, "akl", "//workshop") == (0, "")
    assert hk(store, "ls", ",") == (0, "main.aux(3) main.dvi(3) main.log(3) main.tex(3)\n")
    code, out = hk(store, "ldf")
    assert code == 1
    assert out == "Error: files with the same filename.\nmain.aux main.dvi main.log main.tex\n"
    assert hk(store, "akl", "//SIG/DPS") == (0, "")
    assert hk(store, "ls", ",") == (0, "main.aux main.dvi main.log main.tex\n")
    assert hk(store, "ldf") == (0, "")
    assert hk(store, "ls") == (0, "main.aux main.dvi main.log main.tex\n")
    assert hk(store, "ls", "-1", ",//society/IPSJ,main.tex") == (0, "main.tex\n")


def test_keywords_and_tree(store: Path) -> None:
    assert hk(store, "mkkw", "//animal/dog")[0] == 1          # parent missing
    assert hk(store, "mkkw", "-p", "//animal/dog/poodle") == (0, "")
    code, out = hk(store, "kw")
    assert code == 0
    lines = out.splitlines()
    assert "//workshop (8)" in lines and "  /OS (4)" in lines and "    /poodle (0)" in lines
    assert hk(store, "kw", "//SIG") == (0, "//SIG (4)\n  /DPS (0)\n  /OS (4)\n")
    assert hk(store, "rmkw", "//animal")[0] == 1               # has children
    assert hk(store, "rmkw", "//animal/dog/poodle", "//animal/dog", "//animal") == (0, "")
    code, out = hk(store, "rmkw", "//workshop")
    assert code == 1 and out == "Error: keyword //workshop is carried by 8 file(s)\n"


def test_errors_are_one_line_and_nonzero(store: Path) -> None:
    for args, msg in [
        (("akl", "//nope"), "Error: no keyword //nope\n"),
        (("akl", "workshop"), "Error: 'workshop': a keyword starts with '//' (e.g. //workshop)\n"),
        (("atkw", "//nope", "main.tex"), "Error: no keyword //nope\n"),
        (("atkw", "//workshop", "nofile"), "Error: nofile: no such file\n"),
        (("ls", "//workshop,nofile"), "Error: //workshop,nofile: no file matches\n"),
        (("ldf", "main.tex"), "Error: 'main.tex': ldf takes a spec (',', ',//c', '//a//b,name')\n"),
        (("rkl", "//workshop"), "Error: //workshop is not in the directory keyword list\n"),
        (("mkkw", "//a//b"), None),
        (("ls", "//a///b"), None),
        (("rme", "//workshop,main.tex"), "Error: //workshop,main.tex: 2 files match; give a spec that "
                                         "names one, or rme --all //workshop,main.tex to delete them all\n"),
        (("chfn", "//workshop,main.tex", "x.tex"), "Error: //workshop,main.tex: 2 files match; give a spec "
                                                   "that names one\n"),
        # The file is named as the user named it, not by its entity id.
        (("dtkw", "//society/IPSJ", "main.aux"), "Error: main.aux does not carry //society/IPSJ\n"),
    ]:
        code, out = hk(store, *args)
        assert code == 1, (args, out)
        assert out.count("\n") == 1 and out.startswith("Error: "), (args, out)
        if msg:
            assert out == msg


@pytest.mark.parametrize("args, says", [
    (("atkw", "//workshop"), "Error: Missing argument 'FILE...'. Usage: hk atkw [OPTIONS] HKLIST FILE... "
                             "(help: hk atkw -h)"),
    (("ls", "--bogus"), "Error: No such option '--bogus'."),
    (("nope",), "Error: No such command 'nope'. Usage: hk [OPTIONS] COMMAND [ARGS]... (help: hk -h)"),
    (("--bogus",), "Error: No such option '--bogus'."),
    (("embed", "f"), "Error: give exactly one of --vector, --from, --clear, --show. Usage: hk embed"),
])
def test_usage_errors_are_one_line_with_the_usage(args: tuple[str, ...], says: str) -> None:
    r = CliRunner().invoke(cli, list(args), prog_name="hk")
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and r.output.startswith(says), r.output
    assert "(help: hk" in r.output


def test_chfn_rme_info(store: Path) -> None:
    assert hk(store, "chfn", "main.log", "paper.log") == (0, "")
    assert hk(store, "ls") == (0, "main.aux main.dvi main.tex paper.log\n")
    code, out = hk(store, "info", "paper.log")
    assert code == 0
    fields = dict(ln.split(":", 1) for ln in out.splitlines())
    assert fields["name"].strip() == "paper.log" and fields["keywords"].strip() == "(none)"
    assert fields["links"].strip().startswith("/paper.log") and fields["size"].strip() == "0"
    eid = int(fields["entity"])
    assert hk(store, "rme", "//SIG/OS,main.log") == (0, "")
    assert hk(store, "ls", "//workshop,main.log") == (0, "main.log\n")
    # --all says what it deleted, one line per file in the paper's notation.
    assert hk(store, "rme", "--all", "//workshop,main.log") == (0, "deleted //society/ACM//workshop,main.log\n")
    assert hk(store, "ls", "//workshop")[1] == "main.aux(2) main.dvi(2) main.tex(2)\n"
    assert hk(store, "rme", "paper.log") == (0, "")
    with Store.open(store) as s:
        assert not s.entity_path(eid).exists()


def test_dtkw_and_rm_keep_entities(store: Path) -> None:
    assert hk(store, "atkw", "-p", "//new/kw", "main.tex") == (0, "")
    assert hk(store, "rm", "main.tex") == (0, "")                   # keeps it: it has an HK
    assert hk(store, "ls", "//new") == (0, "main.tex\n")
    assert hk(store, "dtkw", "//new", "//new,main.tex") == (0, "")  # no HK, no link: lost+found
    assert hk(store, "ls", "lost+found") == (0, "main.tex\n")
    assert hk(store, "rm", "main.aux") == (0, "")                   # no HK: deleted, as UNIX rm
    assert hk(store, "ls") == (0, "lost+found main.dvi main.log\n")


def test_permission_problem_is_one_line(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 54321)
    r = CliRunner().invoke(cli, ["mkkw", "--store", str(store), "--user", "root", "//x"])
    assert r.exit_code == 1
    assert r.output == "Error: permission denied: the namespace here is root's, not yours\n"


def test_user_option_names_an_existing_user(store: Path) -> None:
    """--user with a name that is no system user and has no namespace is refused, as chns
    refuses it (a typo made a new, empty namespace and 'no keyword' errors)."""
    r = CliRunner().invoke(cli, ["mkkw", "--store", str(store), "--user", "no-such-user-qa", "//x"])
    assert (r.exit_code, r.output) == (1, "Error: no such user 'no-such-user-qa'\n")
    with Store.open(store) as s:
        assert "no-such-user-qa" not in [name for _, name in s.namespaces()]
    r = CliRunner().invoke(cli, ["kw", "--store", str(store), "--user", str(os.geteuid())])
    assert r.exit_code == 0, r.output


def test_every_command_has_help_with_an_example() -> None:
    for name, cmd in cli.commands.items():
        if cmd.hidden or name in ("mount", "umount", "demo"):
            continue
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0, name
        assert "Example" in r.output, name


def test_parse_hk_arg() -> None:
    assert parse_typed_hk_list("//SIG/DPS,//workshop") == (("SIG", "DPS"), ("workshop",))
    assert parse_typed_hk_list("//a//b") == (("a",), ("b",))
    assert parse_typed_hk_list(",//c", [("a",)]) == (("a",), ("c",))
    assert parse_typed_hk_list(",", [("a",)]) == (("a",),)
    with pytest.raises(InvalidArgument):
        parse_typed_hk_list("a")
    with pytest.raises(HKSyntaxError):
        parse_typed_hk_list("//a,b")


def test_format_columns_like_ls() -> None:
    names = ["main.aux(3)", "main.dvi(3)", "main.log(3)", "main.tex(3)"]
    assert format_columns(names, 40) == ["main.aux(3) main.log(3)", "main.dvi(3) main.tex(3)"]
    assert format_columns(names, 80) == [" ".join(names)]
    assert format_columns(names, 5) == names
    assert format_columns(["a", "bbbbbb", "c"], 9) == ["a      c", "bbbbbb"]
    assert format_columns([], 10) == []


def test_outside_a_mount_without_store() -> None:
    r = CliRunner().invoke(cli, ["akl", "//x"])
    assert r.exit_code == 1
    assert r.output == "Error: not inside an hkfs mount (cd into one, or give --store STORE)\n"
    assert isinstance(click.ClickException("x"), Exception)

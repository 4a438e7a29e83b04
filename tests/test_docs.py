"""Every `hk` subcommand is documented in docs/commands.md under its own heading."""

from __future__ import annotations

import re
from pathlib import Path

import click

from hkfs.cli.main import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        out.append(prefix + name)
        if isinstance(cmd, click.Group):
            out += _commands(cmd, prefix + name + " ")
    return out


def test_every_command_is_documented() -> None:
    headings = set(re.findall(r"^#{2,3} (.+?)\s*$", DOC.read_text(encoding="utf-8"), re.M))
    missing = [c for c in _commands(cli) if c not in headings]
    assert not missing, f"docs/commands.md has no heading for: {', '.join(missing)}"


def test_every_paper_command_has_an_example() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in ("mkkw", "rmkw", "atkw", "dtkw", "akl", "rkl", "ldf", "chfn", "ls", "chns", "rm", "rme"):
        section = re.search(rf"^## {name}\n(.*?)(?=^#)", text, re.M | re.S)
        assert section, name
        assert "```" in section.group(1), f"{name}: no example"


ROOT = DOC.parent.parent


def test_architecture_table_names_every_module() -> None:
    """docs/architecture.md's module table names every file of hkfs/*/ (or its folder), and
    every path it names exists: the table is where a newcomer looks a module up."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    named = set(re.findall(r"`((?:hkfs|vecindex)/[^`]*)`", table))
    gone = sorted(p for p in named if not (ROOT / p).exists())
    assert not gone, f"docs/architecture.md's module table names missing files: {', '.join(gone)}"
    files = [p for p in (ROOT / "hkfs").glob("*/*") if p.suffix in (".py", ".sql", ".sh", ".bash", ".zsh")]
    missing = [
        str(p.relative_to(ROOT)) for p in files
        if p.name != "__init__.py"
        and str(p.relative_to(ROOT)) not in named
        and str(p.parent.relative_to(ROOT)) + "/" not in named
    ]
    assert not missing, f"docs/architecture.md's module table lacks: {', '.join(sorted(missing))}"

"""The first hour: scripts/setup.sh waits for a busy apt, `make umount` fails when the unmount
does, `make lint` installs ruff, and every mount command's --help ends with an example."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from hkfs.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent


def test_every_apt_get_in_setup_waits_for_the_lock() -> None:
    """Another apt (unattended-upgrades, a second checkout's setup) holding the lock is waited for."""
    calls = [ln for ln in (ROOT / "scripts/setup.sh").read_text().splitlines()
             if re.match(r"\s*apt-get\b", ln)]
    assert len(calls) == 2                              # update, install
    for ln in calls:
        assert '"${wait_lock[@]}"' in ln, ln
    assert "wait_lock=(-o DPkg::Lock::Timeout=600)" in (ROOT / "scripts/setup.sh").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_umount_fails_when_the_unmount_fails(tmp_path: Path) -> None:
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "umount", f"DEMO_MNT={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "not an hkfs mount point" in r.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lint_installs_ruff_first() -> None:
    r = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), "lint"], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert lines[0] == "HKFS_EXTRAS=test,fast,dev bash scripts/setup.sh", r.stdout
    assert "-m ruff check" in lines[1]
    assert "ruff" in (ROOT / "scripts/setup.sh").read_text()


@pytest.mark.parametrize("command", ["mount", "umount", "demo"])
def test_mount_commands_help_shows_an_example(command: str) -> None:
    r = CliRunner().invoke(cli, [command, "--help"])
    assert r.exit_code == 0
    assert re.search(r"Example: .*hk " + command, r.output), r.output

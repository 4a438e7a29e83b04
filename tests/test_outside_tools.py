"""Outside file-system exercisers against a real mount: fio, stress-ng and dbench.

Test suites nobody here wrote call the file system in orders ours do not (libfuse's
`.fuse_hidden` renames surfaced that way). Each tool runs for a few seconds in an ordinary
directory and, where its calls mean something there, in a view, with its own verification
on: fio checks every block it wrote (crc32c/md5 headers), stress-ng `--verify` checks what
each stressor did, dbench checks the status of every call of its load file. Afterwards:
no `.fuse_hidden*` name left, `hk fsck` clean, and the fixture fails on any ERROR or
traceback in daemon.log. A tool that is missing skips its test (scripts/setup.sh installs
them). What these tools showed against ext4 is in docs/mount.md ("POSIX", "Where it differs").
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import HK_CMD, Mount

pytestmark = pytest.mark.mount

TOOL_TIMEOUT = 240          # an upper bound for a hang on a loaded 2-core box, not an expectation


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    return path


def run_tool(cmd: list[str], cwd: Path, mount: Mount) -> str:
    """Run cmd in cwd; fail the test with its output (and the daemon log's tail) unless it exits 0."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}\n"
                    f"--- daemon.log tail\n{mount.log_tail()}")
    return out


def places(mount: Mount) -> dict[str, Path]:
    """An ordinary directory and a view (a keyword made by mkdir) of the mount."""
    d = mount.root / "d"
    view = mount.root / "@" / "outside"
    d.mkdir()
    view.mkdir()
    return {"directory": d, "view": view}


def check_clean(mount: Mount) -> None:
    """Nothing of libfuse's hidden names left, and the store consistent."""
    hidden = [p for p in mount.root.rglob(".fuse_hidden*")]
    assert not hidden, hidden
    r = subprocess.run(HK_CMD + ["fsck", str(mount.store)], capture_output=True, text=True,
                       timeout=TOOL_TIMEOUT)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr


FIO_JOB = """
[global]
size=2m
bs=4k
direct=0
verify_fatal=1
do_verify=1

[write-fsync]
ioengine=psync
rw=write
verify=crc32c
fsync=8
fallocate=native

[randrw]
ioengine=psync
rw=randrw
verify=crc32c
numjobs=2

[randwrite-keep]
ioengine=pvsync2
rw=randwrite
verify=md5
fallocate=keep

[mmap]
ioengine=mmap
rw=randwrite
verify=crc32c

[many-files]
ioengine=psync
rw=randwrite
verify=crc32c
nrfiles=8
filesize=128k
openfiles=3
file_service_type=random

[fdatasync-unlink]
ioengine=sync
rw=randwrite
verify=md5
fdatasync=4
unlink=1
"""


def test_fio_verifies_every_block(mount: Mount, tmp_path: Path) -> None:
    """fio writes with several engines (read/write, pvsync2, mmap), fsync, fdatasync and
    fallocate, then reads every block back and checks its checksum header, in a directory
    and in a view; the job ends with verification failures as errors (verify_fatal)."""
    fio = need("fio")
    job = tmp_path / "outside.fio"
    job.write_text(FIO_JOB)
    for name, where in places(mount).items():
        out = run_tool([fio, "--output-format=normal", str(job)], where, mount)
        assert "verify:" not in out and "bad magic" not in out, f"{name}:\n{out[-4000:]}"
        assert out.count("err= 0") == 7, f"{name}: a job failed:\n{out[-4000:]}"
    check_clean(mount)


# Stressors whose one bogo operation is small (so a 3 s run ends near 3 s on this store), each
# with its own verification. link and symlink are left out: one operation is 8192 names, tens
# of seconds through a mount; test_state_machine.py compares links with ext4 instead.
STRESSORS = [
    "--rename", "1",
    "--hdd", "1", "--hdd-bytes", "1m", "--hdd-opts", "wr-rnd,rd-rnd,fsync",
    "--fallocate", "1", "--fallocate-bytes", "1m",
    "--dentry", "1", "--dentries", "64",
    "--dir", "1", "--dir-dirs", "64",
    "--utime", "1",
    "--chmod", "1",
    "--flock", "1",
    "--lockf", "1",
    "--fcntl", "1",
    "--copy-file", "1",
    "--sendfile", "1", "--sendfile-size", "64k",
    "--seek", "1", "--seek-size", "1m",
    "--fsize", "1",
    # names of letters, digits and ._- only: `@` (the keyword space in every directory) and
    # names starting with `,` are path syntax, non-UTF-8 names are EILSEQ (docs/mount.md)
    "--filename", "1", "--filename-opts", "posix",
]


@pytest.mark.parametrize("place", ["directory", "view"])
def test_stress_ng_file_stressors(mount: Mount, place: str) -> None:
    """stress-ng's file-system stressors for 3 s side by side, with --verify: every stressor
    must finish without a failure (stress-ng also exits 0 after some `fail:` lines, so those
    are checked too)."""
    stress_ng = need("stress-ng")
    where = places(mount)[place]
    out = run_tool([stress_ng, "--temp-path", str(where), "--verify", "--metrics-brief",
                    "--timeout", "3s", *STRESSORS], where, mount)
    bad = [ln for ln in out.splitlines() if " fail:" in ln or " error:" in ln or "WARNING" in ln]
    assert not bad, "\n".join(bad)
    assert "successful run completed" in out, out[-4000:]
    check_clean(mount)


def test_dbench_in_a_directory(mount: Mount) -> None:
    """dbench replays its file-server load (creates, renames, unlinks, finds, locks, reads and
    writes, each with the status it expects) with two clients for 3 s."""
    dbench = need("dbench")
    load = Path("/usr/share/dbench/client.txt")
    if not load.exists():
        pytest.skip(f"{load} missing (Debian's dbench package has it)")
    where = places(mount)["directory"]
    out = run_tool([dbench, "-D", str(where), "-c", str(load), "-t", "3", "2"], where, mount)
    assert "ERROR" not in out and "failed" not in out, out[-4000:]
    assert "Throughput" in out, out[-4000:]
    check_clean(mount)

"""docs/query.md's worked example, run verbatim in bash on a mounted demo store (with the demo
embeddings): every command's output must be what the document shows."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "query.md"
MARK = "@@@ end of command @@@"


def session() -> list[tuple[str, list[str]]]:
    """(command, expected non-empty output lines) of the worked example's console block."""
    text = DOC.read_text()
    block = re.search(r"## Worked example.*?```console\n(.*?)```", text, re.S).group(1)
    out: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif line.strip():
            out[-1][1].append(line)
    return out


def test_worked_example_runs_as_documented(mount_factory) -> None:
    def fill(store: Path) -> None:
        from hkfs.core.store import Store
        from hkfs.demo.data import fill_demo
        from hkfs.demo.embeddings import fill_demo_embeddings
        with Store.open(store) as st:
            fill_demo(st)
            fill_demo_embeddings(st)

    m = mount_factory(fill=fill)
    steps = session()
    assert steps[0][0].startswith("make run")
    steps = steps[1:]
    script = "set +e\n" + "".join(f"{cmd} 2>&1\necho '{MARK}'\n" for cmd, _ in steps)
    got = m.run(script, check=False).stdout.split(MARK + "\n")
    for (cmd, want), out in zip(steps, got, strict=False):
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if want and want[-1].startswith("..."):
            want = want[:-1]
            lines = lines[: len(want)]
        assert lines == want, f"$ {cmd}\n--- got\n{out}"


def test_hk_demo_store_has_the_embeddings(tmp_path: Path) -> None:
    """`make run` (hk demo) makes the store the worked example runs on."""
    import os
    import subprocess
    import sys

    import pytest
    from conftest import HK_CMD, fuse_usable

    if not fuse_usable():
        pytest.skip("FUSE is not available")
    store, mnt = tmp_path / "demo-store", tmp_path / "demo-mnt"
    r = subprocess.run(HK_CMD + ["demo", "--store", str(store), "--mountpoint", str(mnt)],
                       capture_output=True, text=True, timeout=120)
    try:
        assert r.returncode == 0, r.stderr
        assert ".query" in r.stdout
        out = (mnt / "@/photo/@/animal/fig2.jpg.query").read_text()
        assert out.splitlines()[0] == "0.815664\t@/photo/@/animal/fig1.jpg"
    finally:
        subprocess.run(HK_CMD + ["umount", str(mnt)], capture_output=True, timeout=120)
    assert not os.path.ismount(mnt) and sys.executable

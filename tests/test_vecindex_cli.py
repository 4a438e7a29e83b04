"""The `vecindex` command through click's CliRunner: help, build/query/info/bench, clear errors."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from vecindex.cli import main


def test_help_lists_commands() -> None:
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in ("build", "query", "info", "bench"):
        assert cmd in r.output
        sub = CliRunner().invoke(main, [cmd, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_build_query_info_bench(tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    x[:3].tofile(tmp_path / "q.f32")
    run = CliRunner().invoke
    r = run(main, ["build", str(tmp_path / "v.npy"), str(tmp_path / "ix"), "--metric", "l2",
                   "--nlist", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "2000 rows" in r.output
    r = run(main, ["query", str(tmp_path / "ix"), str(tmp_path / "q.f32"), "-k", "2", "--nprobe", "8"])
    assert r.exit_code == 0, r.output
    first = [line.split("\t") for line in r.output.splitlines() if line.split("\t")[1] == "0"]
    assert [int(f[2]) for f in first] == [0, 1, 2]
    r = run(main, ["query", str(tmp_path / "ix"), str(tmp_path / "q.f32"), "--json", "-k", "1"])
    assert json.loads(r.output.splitlines()[1])["hits"][0]["id"] == 1
    r = run(main, ["info", str(tmp_path / "ix"), "--verify", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["rows"] == 2000 and d["nlist"] == 8 and d["metric"] == "l2" and d["verified"]
    r = run(main, ["bench", str(tmp_path / "ix"), "--queries", "10", "--nprobe", "2,8"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1].startswith("8\t1.000")


def test_clear_errors(tmp_path) -> None:
    run = CliRunner().invoke
    r = run(main, ["info", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output
    (tmp_path / "raw.f32").write_bytes(b"\0" * 12)
    r = run(main, ["build", str(tmp_path / "raw.f32"), str(tmp_path / "ix")])
    assert r.exit_code == 1 and "dimension" in r.output
    r = run(main, ["build", str(tmp_path / "raw.f32"), str(tmp_path / "ix"), "--dim", "5"])
    assert r.exit_code == 1 and "multiple" in r.output
    np.save(tmp_path / "v.npy", np.ones((20, 4), np.float32))
    assert run(main, ["build", str(tmp_path / "v.npy"), str(tmp_path / "ix2"), "--quiet"]).exit_code == 0
    np.save(tmp_path / "q.npy", np.ones((2, 3), np.float32))
    r = run(main, ["query", str(tmp_path / "ix2"), str(tmp_path / "q.npy")])
    assert r.exit_code == 1 and "dimension" in r.output

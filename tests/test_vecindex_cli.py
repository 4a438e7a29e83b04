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


def test_build_over_an_index_names_the_flag(tmp_path) -> None:
    np.save(tmp_path / "v.npy", np.ones((20, 4), np.float32))
    run = CliRunner().invoke
    assert run(main, ["build", str(tmp_path / "v.npy"), str(tmp_path / "ix"), "--quiet"]).exit_code == 0
    r = run(main, ["build", str(tmp_path / "v.npy"), str(tmp_path / "ix"), "--quiet"])
    assert r.exit_code == 1 and "--overwrite" in r.output and "overwrite=True" not in r.output
    assert run(main, ["build", str(tmp_path / "v.npy"), str(tmp_path / "ix"), "--quiet",
                      "--overwrite"]).exit_code == 0


def test_not_an_npy_file_is_one_clear_line(tmp_path) -> None:
    (tmp_path / "v.npy").write_text("id,x,y\n1,2,3\n")
    r = CliRunner().invoke(main, ["build", str(tmp_path / "v.npy"), str(tmp_path / "ix")])
    assert r.exit_code == 1 and "not a NumPy .npy file" in r.output
    assert "pickle" not in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))  # an object array: numpy says pickle
    r = CliRunner().invoke(main, ["build", str(tmp_path / "o.npy"), str(tmp_path / "ix")])
    assert r.exit_code == 1 and "not a float .npy array" in r.output


def test_cli_and_api_default_scan_agree(tmp_path) -> None:
    import inspect

    from vecindex import IVFIndex
    from vecindex.cli import build

    api = inspect.signature(IVFIndex.build).parameters["scan"].default
    cli = next(p.default for p in build.params if p.name == "scan")
    assert api == cli == "auto"
    x = np.random.default_rng(1).standard_normal((3000, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    assert CliRunner().invoke(main, ["build", str(tmp_path / "v.npy"), str(tmp_path / "cli"), "--quiet"]).exit_code == 0
    api_ix = IVFIndex.build(tmp_path / "api", x, progress=False)
    assert IVFIndex.open(tmp_path / "cli").info()["scan"] == api_ix.info()["scan"]


def test_info_says_how_nprobe_was_chosen(tmp_path) -> None:
    rng = np.random.default_rng(2)
    c = rng.standard_normal((30, 8)) * 4
    x = (c[rng.integers(0, 30, 20_000)] + rng.standard_normal((20_000, 8))).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    r = CliRunner().invoke(main, ["build", str(tmp_path / "v.npy"), str(tmp_path / "ix"), "--quiet",
                                  "--metric", "l2"])
    assert r.exit_code == 0 and "calibrated" in r.output, r.output
    d = json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "ix"), "--json"]).output)
    assert "calibrated" in d["default_nprobe_chosen_by"] and 1 <= d["default_nprobe"] <= d["nlist"]

"""scripts/bench_vecindex.py keeps every section's results: a run of one section replaces that
section and keeps the others, so docs/bench/vecindex.md never loses what was not rerun."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("memory_profiler")  # the bench script's own import (extras test and bench)
sys.path.insert(0, str(ROOT / "scripts"))
import bench_vecindex as bench  # noqa: E402


def test_the_committed_results_rebuild_the_doc_with_every_section(tmp_path, monkeypatch) -> None:
    """The results file lives in docs/bench (committed): a fresh clone rebuilds the whole doc from it,
    each section with its own command, date and seeds."""
    allr = json.loads((ROOT / "docs" / "bench" / "vecindex-results.json").read_text())
    monkeypatch.setattr(bench, "DOCS", tmp_path)
    monkeypatch.setattr(bench, "plot", lambda allr: None)
    bench.write_docs(allr)
    md = (tmp_path / "vecindex.md").read_text()
    for key, r in allr.items():
        if "command" in r:
            assert f"`{r['command']}`" in md, key
            assert r["when"] in md, key


def test_a_one_section_run_keeps_the_other_sections(monkeypatch) -> None:
    allr = {"glove": {"rows": 1, "when": "old", "note": "about the old run", "hnsw": {"sweep": []}},
            "zipf-2M": {"rows": 2, "when": "older"}}
    monkeypatch.setattr(bench, "NOTE", "")
    monkeypatch.setattr(bench, "NO_HNSW", False)
    got = bench.merge_section(allr, "glove", {"rows": 1, "command": "new"}, "now")
    assert got["zipf-2M"] == allr["zipf-2M"]
    assert got["glove"] == {"rows": 1, "command": "new", "when": "now"}  # the old note went with its run
    monkeypatch.setattr(bench, "NO_HNSW", True)
    monkeypatch.setattr(bench, "NOTE", "idle machine")
    got = bench.merge_section(allr, "glove", {"rows": 1}, "now")
    assert got["glove"]["hnsw"] == {"sweep": [], "when": "old"}  # --no-hnsw keeps the old, dated
    assert got["glove"]["note"] == "idle machine"
    assert allr["glove"]["when"] == "old"  # the input is not changed

"""The background-scoring benchmark runs at a tiny size and writes its table's numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).parents[2] / "benchmarks" / "background_scoring.py"


def test_benchmark_writes_one_row_per_mode(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("background_scoring", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    module.main(["--prompts", "3", "--chunks", "3", "--repeats", "1", "--reward-latency", "0.01", "--out", str(out)])
    data = json.loads(out.read_text())
    assert [row["mode"] for row in data["rows"]] == ["one piece", "chunks, inline", "chunks, background"]
    assert [row["chunks"] for row in data["rows"]] == [1, 3, 3]
    assert all(row["median_s"] > 0 and len(row["times_s"]) == 1 for row in data["rows"])
    assert "chunks, background" in capsys.readouterr().out

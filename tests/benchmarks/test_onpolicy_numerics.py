"""benchmarks/onpolicy_numerics.py runs end to end and its table agrees with its JSON."""

from __future__ import annotations

import json

import pytest

from treegrpo.benchmarks import onpolicy_numerics


@pytest.mark.exact_numerics  # the script installs its own simulated numerics per row
def test_the_statistics_table_runs_and_every_row_is_rounding(tmp_path):
    out = tmp_path / "onpolicy.json"
    result = onpolicy_numerics.main(["--iterations", "1", "--problems", "digits", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["numerics"] for r in rows] == ["fp32", "tf32", "bf16"] and rows == result["rows"]
    assert all(r["rounding"] and r["rounding_z"] < 30 for r in rows)
    assert rows[1]["max_deviation"] > 0 and rows[2]["max_deviation"] > rows[1]["max_deviation"]  # bf16 rounds more
    assert out.with_suffix(".md").read_text() == onpolicy_numerics.table(rows) + "\n"


@pytest.mark.exact_numerics  # the --real rows are this machine's own kernels, nothing simulated
def test_the_real_kernel_rows_at_fp32_and_bf16(tmp_path):
    out = tmp_path / "real.json"
    result = onpolicy_numerics.main(["--problems", "--real", "--real-size", "tiny", "--device", "cpu",
                                     "--iterations", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == result["rows"] and [r["numerics"] for r in rows] == ["fp32", "bf16"]
    for row in rows:
        assert {"max_deviation", "ratio_std", "clipped_fraction", "rounding_z"} <= set(row)
        assert row["problem"].startswith("tiny (real kernels") and row["clip_range"] == 1e-4
    assert rows[1]["max_deviation"] > rows[0]["max_deviation"]  # bf16 rounds more than fp32

"""benchmarks/backup_weights.py runs end to end, and its JSON shows weights made of the noise alone."""

from __future__ import annotations

import json

from treegrpo.benchmarks import backup_weights


def test_the_weights_table_runs_and_two_models_agree_given_the_same_noise(tmp_path):
    out = tmp_path / "backup_weights.json"
    result = backup_weights.main(["--parents", "8", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == result["rows"] and len(rows) == 2 * len(backup_weights.SIZES)
    by_key = {(row["dims"], row["reduce"]): row for row in rows}
    assert by_key[(16 * 64 * 64, "mean")]["ess_min"] > 2.999  # temperature 1, mean reduction: `mean`
    assert by_key[(16 * 64 * 64, "sum")]["max_weight"] > 0.99  # sum reduction: one-hot on the smallest noise
    assert all(row["model_disagreement_float64"] < 1e-10 for row in rows)
    assert all(row["model_disagreement"] < 1e-5 for row in rows if row["reduce"] == "mean")

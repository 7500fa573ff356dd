"""`benchmarks/predicted_floor.py`: its counts agree with closed forms computed here, its FLOPs with
the hand count of docs/performance.md, and its floors with its own columns."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from treegrpo import cli


def expected_tree_nfe(steps: int, k: int, d: int, alpha: Fraction) -> Fraction:
    """E[s + (1 + k + .. + k^(d-1)) + k^d (T - s - d)] with P(s) proportional to alpha^s on s <= T - d."""
    starts = range(steps - d + 1)
    weights = [alpha**s for s in starts]
    internal = sum(k**j for j in range(d))
    return sum(w * (s + internal + k**d * (steps - s - d)) for s, w in zip(starts, weights)) / sum(weights)


@pytest.mark.slow
def test_predicted_floor_at_sd35m_and_flux_dev_scale(tmp_path, capsys):
    out = tmp_path / "floor.json"
    assert cli.main(["bench", "--name", "predicted_floor", "--", "--steps", "10", "6", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["size"], r["method"], r["steps"]): r for r in data["rows"]}
    assert len(rows) == 8 and "floor s" in capsys.readouterr().out
    for steps in (10, 6):
        tree = rows[("flux-dev", "treegrpo k3 d3", steps)]
        assert tree["nfe_per_iteration"] == pytest.approx(32 * float(expected_tree_nfe(steps, 3, 3, Fraction(1, 2))))
        assert tree["forward_backward_rows"] == 32 * 13
        dance = rows[("flux-dev", "grpo (DanceGRPO settings)", steps)]
        assert dance["nfe_per_iteration"] == 32 * (1 + 27 * (steps - 1))  # one shared first step
        assert rows[("sd35m", "grpo (DanceGRPO settings)", steps)]["nfe_per_iteration"] == 32 * 27 * steps
        assert dance["forward_backward_rows"] == 32 * 27 * int(0.6 * (steps + 1))
    assert round(32 * expected_tree_nfe(10, 3, 3, Fraction(1, 2))) == 5658  # the table's 5 658 (176.8 per prompt)
    flux, sd3 = rows[("flux-dev", "treegrpo k3 d3", 10)], rows[("sd35m", "treegrpo k3 d3", 10)]
    # by hand: 57 blocks x 12 x 3072^2 multiply-adds on 1536 tokens, plus joint attention (docs/performance.md)
    by_hand = 2 * 57 * 12 * 3072**2 * 1536 + 57 * 2 * 1536**2 * 3072 * 2
    assert flux["forward_tflop"] * 1e12 == pytest.approx(by_hand, rel=0.03)
    assert flux["parameters_b"] == pytest.approx(11.9, abs=0.05) and sd3["parameters_b"] == pytest.approx(2.24, abs=0.01)
    # a full backward is about twice a forward; a frozen base skips the weight gradients
    assert 2.8 < flux["forward_backward_tflop"] / flux["forward_tflop"] < 3.2
    assert flux["forward_tflop"] * 2 < flux["forward_backward_frozen_tflop"] < flux["forward_backward_tflop"]
    assert sd3["forward_ms_per_image"] == pytest.approx(9.6)  # the reference sets the throughput
    for row in rows.values():
        assert row["floor_s"] == pytest.approx(row["sampling_s"] + row["update_s"])
        assert row["sampling_s"] == pytest.approx(row["nfe_per_iteration"] * row["forward_ms_per_image"] / 1e3)

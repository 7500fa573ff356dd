"""`benchmarks/predicted_floor.py`: its counts agree with closed forms computed here, its FLOPs with
the hand count of docs/performance.md, and its floors with its own columns; the Wan2.1-T2V-1.3B and
Qwen-Image transformers build and count on the meta device.

The fast tests count Wan and Qwen-Image at 1 and 2 blocks (under a second each; the full 30- and
60-block counts take 10-20 s on two shared CPU cores): FLOPs are affine in the block count (the
embeddings and the output head once, every block alike), so ``F(L) = F(1) + (L - 1) (F(2) - F(1))``
extrapolates to the full model, checked here against the hand count and, in the slow test, against
the full count."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from benchmarks import predicted_floor  # not treegrpo.benchmarks.*: the CLI runs that one with runpy
from treegrpo import cli

WAN_TOKENS = 21 * 30 * 52  # 81 frames -> 21 latent frames; 480 x 832 -> 60 x 104 latents in 2x2 patches
QWEN_TOKENS = 32 * 32      # 512 px -> 64 x 64 latents in 2x2 patches


def wan_by_hand(layers: int = 30, text: int = 512, d: int = 1536, ffn: int = 8960) -> float:
    """Per block, every video token meets self-attention q, k, v, out and cross-attention q, out
    (6 d^2 multiply-adds) and the FFN (2 d ffn); self-attention is 2 x tokens^2 x d multiply-adds,
    cross-attention 2 x tokens x text x d plus its k, v on the text (2 d^2 per text token)."""
    linear = WAN_TOKENS * (6 * d * d + 2 * d * ffn) + text * 2 * d * d
    attention = 2 * WAN_TOKENS**2 * d + 2 * WAN_TOKENS * text * d
    return 2.0 * layers * (linear + attention)


def qwen_by_hand(layers: int = 60, text: int = 64, d: int = 3072) -> float:
    """Per MMDiT block every token (image or text) meets q, k, v, out and a 4x MLP (12 d^2
    multiply-adds); joint attention is 2 x tokens^2 x d."""
    tokens = QWEN_TOKENS + text
    return 2.0 * layers * (12 * d * d * tokens + 2 * tokens**2 * d)


def extrapolated(name: str, layers: int) -> dict[str, float]:
    """The full model's counts from the 1- and 2-block ones (affine in the block count)."""
    one, two = predicted_floor.image_flops(name, layers=1), predicted_floor.image_flops(name, layers=2)
    return {key: one[key] + (layers - 1) * (two[key] - one[key]) for key in one}


def expected_tree_nfe(steps: int, k: int, d: int, alpha: Fraction) -> Fraction:
    """E[s + (1 + k + .. + k^(d-1)) + k^d (T - s - d)] with P(s) proportional to alpha^s on s <= T - d."""
    starts = range(steps - d + 1)
    weights = [alpha**s for s in starts]
    internal = sum(k**j for j in range(d))
    return sum(w * (s + internal + k**d * (steps - s - d)) for s, w in zip(starts, weights)) / sum(weights)


@pytest.mark.slow
def test_predicted_floor_at_sd35m_and_flux_dev_scale(tmp_path, capsys):
    out = tmp_path / "floor.json"
    assert cli.main(["bench", "--name", "predicted_floor", "--", "--sizes", "sd35m", "flux-dev", "--steps", "10", "6",
                     "--out", str(out)]) == 0
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


@pytest.mark.parametrize("name, layers, by_hand, parameters_b", [("wan21-1.3b", 30, wan_by_hand, 1.42),
                                                                  ("qwen-image", 60, qwen_by_hand, 20.43)])
def test_new_sizes_count_on_the_meta_device(name, layers, by_hand, parameters_b):
    size = predicted_floor.FLOOR_SIZES[name]
    assert size["transformer"]["num_layers"] == layers
    counts = extrapolated(name, layers)
    assert counts["forward"] > 0 and counts["forward"] == pytest.approx(by_hand(), rel=0.01)
    assert counts["parameters"] / 1e9 == pytest.approx(parameters_b, abs=0.01)
    # a frozen base still back-propagates through attention (Wan: 70% of its FLOPs) but skips weight gradients
    assert 2.0 * counts["forward"] < counts["forward_backward_frozen"] < counts["forward_backward"]
    assert 2.9 < counts["forward_backward"] / counts["forward"] < 3.1


def test_new_sizes_produce_rows_with_cfg_doubling(tmp_path):
    """The CLI path at 2 blocks per model (the reference SD3.5-M too): every row positive, CFG doubling
    sampling and update alike, each size's own NFE and prompts from FLOOR_SETTINGS."""
    out = tmp_path / "floor.json"
    assert cli.main(["bench", "--name", "predicted_floor", "--", "--sizes", "wan21-1.3b", "qwen-image",
                     "--layers", "2", "--markdown", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["size"], r["method"], r["steps"]): r for r in data["rows"]}
    assert sorted({(size, steps) for size, _, steps in rows}) == [("qwen-image", 6), ("qwen-image", 10),
                                                                  ("wan21-1.3b", 10), ("wan21-1.3b", 20)]
    assert len(rows) == 8
    for (size, method, steps), row in rows.items():
        assert row["forward_tflop"] > 0 and row["forward_backward_tflop"] > row["forward_tflop"] and row["layers"] == 2
        assert row["evaluations_per_row"] == 2 and row["forwards_per_iteration"] == 2 * row["nfe_per_iteration"]
        assert row["sampling_s"] == pytest.approx(2 * row["nfe_per_iteration"] * row["forward_ms_per_image"] / 1e3)
        assert row["update_s"] == pytest.approx(2 * row["forward_backward_rows"] * row["forward_backward_ms_per_image"] / 1e3)
        assert row["floor_s"] == pytest.approx(row["sampling_s"] + row["update_s"])
        assert row["prompts"] == (16 if size == "wan21-1.3b" else 32)
        if method.startswith("grpo"):  # one shared first step per group (DanceGRPO's --init_same_noise)
            assert row["nfe_per_iteration"] == row["prompts"] * (1 + 27 * (steps - 1))
        else:
            expected = row["prompts"] * float(expected_tree_nfe(steps, 3, 3, Fraction(1, 2)))
            assert row["nfe_per_iteration"] == pytest.approx(expected)


@pytest.mark.slow
def test_committed_floor_matches_the_full_counts():
    """benchmarks/results/predicted_floor.json (the docs' tables) has every default size at its full
    block count, agreeing with the extrapolation of the fast test and the hand counts."""
    path = predicted_floor.RESULTS / "predicted_floor.json"
    data = json.loads(path.read_text())
    rows = {(r["size"], r["method"], r["steps"]): r for r in data["rows"]}
    assert {size for size, _, _ in rows} == set(predicted_floor.DEFAULT_SIZES)
    wan, qwen = rows[("wan21-1.3b", "treegrpo k3 d3", 20)], rows[("qwen-image", "treegrpo k3 d3", 10)]
    assert wan["forward_tflop"] * 1e12 == pytest.approx(extrapolated("wan21-1.3b", 30)["forward"], rel=1e-9)
    assert qwen["forward_tflop"] * 1e12 == pytest.approx(extrapolated("qwen-image", 60)["forward"], rel=1e-9)
    assert qwen["forward_tflop"] * 1e12 == pytest.approx(qwen_by_hand(), rel=0.01)

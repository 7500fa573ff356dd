"""Group-normalised leaf advantages against float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from treeadv import NonFiniteError, leaf_advantages


def _reference(rewards: list[list[float]], group: list[int], weights: list[float], eps: float) -> list[float]:
    out = []
    for i, row in enumerate(rewards):
        members = [j for j, g in enumerate(group) if g == group[i]]
        total = 0.0
        for col, w in enumerate(weights):
            values = [rewards[j][col] for j in members]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            total += w * (row[col] - mean) / (std + eps)
        out.append(total)
    return out


def test_single_reward_hand_computed():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 5.0], dtype=torch.float64)
    group = torch.tensor([4, 4, 9, 9, 2])
    got = leaf_advantages(rewards, group, eps=0.0 + 1e-12)
    # group 4: mean 2, population std 1 -> [-1, 1]; group 9 constant -> 0; group 2 singleton -> 0.
    assert got.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0, 0.0], abs=1e-9)


def test_multi_reward_normalises_each_column_then_weights():
    rewards = torch.tensor([[0.30, 5.0], [0.32, 7.0], [0.34, 9.0]], dtype=torch.float64)
    got = leaf_advantages(rewards, torch.zeros(3, dtype=torch.long), weights=[0.8, 0.2])
    z = math.sqrt(1.5)  # each column is an arithmetic sequence: z-scores -sqrt(1.5), 0, sqrt(1.5)
    assert got.tolist() == pytest.approx([-z, 0.0, z], rel=1e-4, abs=1e-9)


@given(
    st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            st.lists(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=2), min_size=n, max_size=n),
            st.lists(st.integers(0, 4), min_size=n, max_size=n),
            st.lists(st.floats(0.0, 2.0), min_size=2, max_size=2),
        )
    )
)
def test_matches_float64_reference(case):
    rewards, group, weights = case
    got = leaf_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(group), weights, eps=1e-6)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(_reference(rewards, group, weights, 1e-6), rel=1e-9, abs=1e-9)


def test_default_weights_are_uniform_and_one_column_equals_1d():
    rewards = torch.randn(12, 3, dtype=torch.float64)
    group = torch.arange(12) % 3
    assert torch.allclose(leaf_advantages(rewards, group), leaf_advantages(rewards, group, [1 / 3] * 3))
    assert torch.allclose(leaf_advantages(rewards[:, 0], group), leaf_advantages(rewards[:, :1], group))


def test_dtype_is_preserved_and_float32_is_close():
    rewards = torch.randn(64, dtype=torch.float64)
    group = torch.arange(64) // 8
    wide = leaf_advantages(rewards, group)
    narrow = leaf_advantages(rewards.float(), group)
    assert narrow.dtype == torch.float32
    assert torch.allclose(narrow.double(), wide, atol=1e-5)


def test_non_finite_rewards_name_count_and_groups():
    rewards = torch.tensor([[1.0, 2.0], [float("nan"), 1.0], [3.0, float("inf")], [1.0, 1.0]])
    with pytest.raises(NonFiniteError, match=r"rewards: 2 NaN/inf values in 2 groups \(group ids \[5, 7\]\)"):
        leaf_advantages(rewards, torch.tensor([1, 5, 7, 7]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": torch.zeros(2, 2, 2)}, r"rewards: expected shape \[L\] or \[L, m\], got \(2, 2, 2\)"),
        ({"rewards": torch.zeros(3, dtype=torch.long)}, r"rewards: expected a floating-point tensor"),
        ({"group": torch.zeros(2, dtype=torch.long)}, r"group: expected integer ids of shape \(3,\)"),
        ({"group": torch.zeros(3)}, r"group: expected integer ids"),
        ({"weights": [1.0, 2.0]}, r"weights: expected one weight per reward column \(1\)"),
        ({"weights": [-1.0]}, r"weights: expected finite non-negative values"),
        ({"eps": -1.0}, r"eps: expected a number >= 0"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, message):
    arguments = {"rewards": torch.zeros(3), "group": torch.zeros(3, dtype=torch.long)} | kwargs
    error = TypeError if "floating" in message else ValueError
    with pytest.raises(error, match=message):
        leaf_advantages(**arguments)

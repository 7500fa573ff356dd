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


# ---------------------------------------------------------------------------------------------- the peers' spreads
def _dance_grpo(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """DanceGRPO ``fastvideo/train_grpo_flux.py:533-545`` (``use_group``), transcribed: contiguous groups."""
    advantages = torch.zeros_like(rewards)
    for i in range(len(rewards) // num_generations):
        start_idx, end_idx = i * num_generations, (i + 1) * num_generations
        group_rewards = rewards[start_idx:end_idx]
        group_mean = group_rewards.mean()
        group_std = group_rewards.std() + 1e-8
        advantages[start_idx:end_idx] = (group_rewards - group_mean) / group_std
    return advantages


def _flow_grpo(prompts: list[str], rewards: list[float]) -> list[float]:
    """Flow-GRPO ``flow_grpo/stat_tracking.py:11-31`` with ``global_std=True`` (``config/base.py:52``), transcribed."""
    import numpy as np

    prompts_a, rewards_a = np.array(prompts), np.array(rewards, dtype=np.float64)
    advantages = np.empty_like(rewards_a) * 0.0
    for prompt in np.unique(prompts_a):
        prompt_rewards = rewards_a[prompts_a == prompt]
        mean = np.mean(prompt_rewards, axis=0, keepdims=True)
        std = np.std(rewards_a, axis=0, keepdims=True) + 1e-4
        advantages[prompts_a == prompt] = (prompt_rewards - mean) / std
    return advantages.tolist()


def test_group_bessel_matches_dance_grpo():
    rewards = torch.tensor([0.31, 0.35, 0.30, 0.38, 0.22, 0.24, 0.27, 0.21], dtype=torch.float64)
    group = torch.arange(8) // 4
    got = leaf_advantages(rewards, group, std="group_bessel")
    assert got.tolist() == pytest.approx(_dance_grpo(rewards, 4).tolist(), rel=1e-12)
    assert not torch.allclose(leaf_advantages(rewards, group), got, rtol=1e-3)  # not today's population std


def test_batch_std_matches_flow_grpo_global_std():
    prompts = ["cat", "dog", "cat", "dog", "cat", "fox"]
    rewards = [0.31, 0.35, 0.30, 0.58, 0.22, 0.4]
    group = torch.tensor([["cat", "dog", "fox"].index(p) for p in prompts])
    got = leaf_advantages(torch.tensor(rewards, dtype=torch.float64), group, std="batch")
    assert got.tolist() == pytest.approx(_flow_grpo(prompts, rewards), rel=1e-12, abs=1e-15)


def test_spreads_normalise_each_column_then_weight():
    rewards = torch.tensor([[0.30, 5.0], [0.32, 9.0], [0.37, 6.0], [0.1, 1.0], [0.2, 1.5]], dtype=torch.float64)
    group, weights = torch.tensor([0, 0, 0, 1, 1]), [0.8, 0.2]
    dance = torch.stack([torch.cat([_dance_grpo(rewards[:3, c], 3), _dance_grpo(rewards[3:, c], 2)]) for c in (0, 1)], 1)
    flow = torch.tensor([_flow_grpo(["a", "a", "a", "b", "b"], rewards[:, c].tolist()) for c in (0, 1)], dtype=torch.float64).T
    for std, want in (("group_bessel", dance), ("batch", flow)):
        got = leaf_advantages(rewards, group, weights, std=std)
        assert got.tolist() == pytest.approx((want * torch.tensor(weights, dtype=torch.float64)).sum(1).tolist(),
                                             rel=1e-12), std


@pytest.mark.parametrize("std", ["group", "group_bessel", "batch"])
def test_every_spread_gives_zero_to_one_leaf_and_constant_groups(std):
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 5.0], dtype=torch.float64)
    got = leaf_advantages(rewards, torch.tensor([4, 4, 9, 9, 2]), std=std)
    assert got[2:].tolist() == [0.0, 0.0, 0.0] and got[0] < 0 < got[1]
    assert torch.equal(leaf_advantages(rewards, torch.tensor([4, 4, 9, 9, 2]), eps=0.0, std=std)[2:], torch.zeros(3))
    with pytest.raises(NonFiniteError):
        leaf_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]), std=std)


def test_each_spread_has_its_peers_eps_and_an_unknown_one_is_named():
    rewards, group = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0, 0])
    for std, eps in (("group", 1e-6), ("group_bessel", 1e-8), ("batch", 1e-4)):
        assert torch.equal(leaf_advantages(rewards, group, std=std), leaf_advantages(rewards, group, eps=eps, std=std))
    assert leaf_advantages(rewards, group, std="batch")[1] == pytest.approx(0.5 / (0.5 + 1e-4), rel=1e-15)
    with pytest.raises(ValueError, match=r"std: expected one of group, group_bessel, batch, got 'global'"):
        leaf_advantages(rewards, group, std="global")

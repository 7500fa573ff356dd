"""Per-depth diagnostics against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from treeadv import Tree, backup_with_weights, depth_diagnostics


def test_depth_statistics_and_ess_by_hand():
    # root 0 -> {1, 2}; 1 -> {3, 4, 5}; 2 is a leaf.
    tree = Tree.from_parents([-1, 0, 0, 1, 1, 1], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, math.log(2.0)], dtype=torch.float64))
    leaf_adv = torch.tensor([0.0, 0.0, 2.0, 1.0, -1.0, 4.0], dtype=torch.float64)
    result = backup_with_weights(tree, leaf_adv)
    stats = depth_diagnostics(tree, result)
    assert stats.batch_size == torch.Size([3])
    assert stats["num_nodes"].tolist() == [1, 2, 3]
    a1 = (1.0 - 1.0 + 2 * 4.0) / 4  # weights 1/4, 1/4, 1/2
    assert result.advantage[1].item() == pytest.approx(a1)
    assert stats["advantage_mean"].tolist() == pytest.approx([(a1 + 2.0) / 2, (a1 + 2.0) / 2, 4.0 / 3])
    assert stats["advantage_std"][1].item() == pytest.approx(abs(a1 - 2.0) / 2)
    ess_depth1 = 1 / (0.25**2 + 0.25**2 + 0.5**2)
    assert stats["ess_mean"][0].item() == pytest.approx(2.0)  # equal log-probs at the root
    assert stats["ess_mean"][1].item() == pytest.approx(ess_depth1)
    assert stats["ess_min"][1].item() == pytest.approx(ess_depth1)
    assert math.isnan(stats["ess_mean"][2].item()) and math.isnan(stats["ess_min"][2].item())


def test_one_hot_weights_give_ess_one():
    tree = Tree.regular(3, 4, 1, log_prob=torch.tensor([0.0] * 3 + [0.0, -800.0, -800.0, -800.0] * 3, dtype=torch.float64))
    stats = depth_diagnostics(tree, backup_with_weights(tree, torch.randn(15, dtype=torch.float64)))
    assert stats["ess_mean"][0].item() == pytest.approx(1.0)

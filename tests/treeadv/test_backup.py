"""The backup against hand computations and a node-by-node reference, and its error messages."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given

from tests.treeadv.reference import reference_backup
from treeadv import (
    BackupEstimator,
    EstimatorError,
    NonFiniteError,
    Tree,
    TreeError,
    backup,
    backup_with_weights,
    leaf_advantages,
    registered_estimators,
    tree_advantages,
)
from treeadv.testing import forest_cases

SHIPPED = ["leaf", "logprob_softmax", "max", "mean"]


def _hand_tree() -> tuple[Tree, torch.Tensor]:
    # root 0 -> {1, 2, 3}; 1 -> {4, 5}; 2 and 3 are leaves; stored out of level order on purpose.
    parent = torch.tensor([-1, 0, 0, 0, 1, 1])
    log_prob = torch.tensor([0.0, 0.2, -0.3, 0.1, -1.0, 0.5], dtype=torch.float64)
    leaf_adv = torch.tensor([99.0, 99.0, 1.0, -2.0, 0.5, 1.5], dtype=torch.float64)
    return Tree.from_parents(parent, log_prob), leaf_adv


def test_logprob_softmax_by_hand():
    tree, leaf_adv = _hand_tree()
    w4, w5 = math.exp(-1.0), math.exp(0.5)
    a1 = (w4 * 0.5 + w5 * 1.5) / (w4 + w5)
    e1, e2, e3 = math.exp(0.2), math.exp(-0.3), math.exp(0.1)
    a0 = (e1 * a1 + e2 * 1.0 + e3 * -2.0) / (e1 + e2 + e3)
    got = backup(tree, leaf_adv)
    assert got.tolist() == pytest.approx([a0, a1, 1.0, -2.0, 0.5, 1.5], rel=1e-12)
    # Temperature 2 halves the logits.
    t4, t5 = math.exp(-0.5), math.exp(0.25)
    assert backup(tree, leaf_adv, temperature=2.0)[1].item() == pytest.approx((t4 * 0.5 + t5 * 1.5) / (t4 + t5))


def test_other_estimators_by_hand():
    tree, leaf_adv = _hand_tree()
    assert backup(tree, leaf_adv, "mean").tolist() == pytest.approx([(1.0 + 1.0 - 2.0) / 3, 1.0, 1.0, -2.0, 0.5, 1.5])
    assert backup(tree, leaf_adv, "max").tolist() == pytest.approx([1.5, 1.5, 1.0, -2.0, 0.5, 1.5])
    # leaf: the root averages its four leaves, not its three children.
    assert backup(tree, leaf_adv, "leaf").tolist() == pytest.approx([(1.0 - 2.0 + 0.5 + 1.5) / 4, 1.0, 1.0, -2.0, 0.5, 1.5])


def test_max_splits_weight_between_tied_children():
    tree = Tree.from_parents([-1, 0, 0, 0], torch.zeros(4))
    result = backup_with_weights(tree, torch.tensor([0.0, 2.0, 2.0, -1.0]), "max")
    assert result.weight.tolist() == [1.0, 0.5, 0.5, 0.0]


@pytest.mark.parametrize("estimator", SHIPPED)
@given(case=forest_cases())
def test_matches_node_by_node_reference(estimator, case):
    tree, leaf_adv = case.tree, case.leaf_adv
    want = reference_backup(tree.parent.tolist(), tree.log_prob.tolist(), leaf_adv.tolist(), estimator)
    got = backup(tree, leaf_adv, estimator)
    assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-9)


@given(case=forest_cases())
def test_large_temperature_tends_to_mean(case):
    got = backup(case.tree, case.leaf_adv, temperature=1e9)
    assert torch.allclose(got, backup(case.tree, case.leaf_adv, "mean"), atol=1e-5)


def test_level_major_and_shuffled_storage_agree_on_a_large_forest():
    generator = torch.Generator().manual_seed(0)
    tree = Tree.regular(50, 3, 3, log_prob=torch.randn(50 * 40, generator=generator, dtype=torch.float64))
    leaf_adv = torch.randn(tree.num_nodes, generator=generator, dtype=torch.float64)
    order = torch.randperm(tree.num_nodes, generator=generator)
    assert torch.allclose(backup(tree.relabel(order), leaf_adv[order]), backup(tree, leaf_adv)[order], atol=1e-12)


def test_tree_advantages_normalises_within_groups_then_backs_up():
    tree = Tree.regular(4, 2, 2, group=[0, 0, 1, 1], log_prob=torch.randn(4 + 8 + 16, dtype=torch.float64))
    rewards = torch.randn(16, 2, dtype=torch.float64)
    leaves = tree.leaves()
    want = backup(tree, tree.scatter_leaves(leaf_advantages(rewards, tree.group[leaves], [0.8, 0.2])), "max")
    got = tree_advantages(tree, rewards, reward_weights=[0.8, 0.2], estimator="max")
    assert torch.equal(got, want)
    # Both trees of a prompt are normalised together: the group's leaf advantages sum to zero.
    assert got[leaves].reshape(2, 8).sum(1).abs().max() < 1e-9


def test_registry_lists_the_shipped_estimators():
    assert set(SHIPPED) <= set(registered_estimators())


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda t, a: backup(t, a[:-1]), TreeError, r"leaf_adv: expected one value per node, shape \(6,\), got \(5,\)"),
        (lambda t, a: backup(t, a.long()), TypeError, r"leaf_adv: expected a floating-point tensor"),
        (lambda t, a: backup(t, a, "softmax"), EstimatorError, r"estimator: unknown name 'softmax'; registered: \["),
        (lambda t, a: backup(t, a, temp=2.0), EstimatorError, r"unknown options \['temp'\]; allowed: \['temperature'\]"),
        (lambda t, a: backup(t, a, temperature=0.0), EstimatorError, r"temperature: expected a finite number > 0, got 0.0"),
        (lambda t, a: backup(t, a, "mean", temperature=1.0), EstimatorError, r"allowed: \[\]"),
    ],
)
def test_bad_arguments_name_the_field(call, error, message):
    tree, leaf_adv = _hand_tree()
    with pytest.raises(error, match=message):
        call(tree, leaf_adv)


def test_non_finite_leaf_advantages_are_rejected_but_internal_junk_is_not():
    tree, leaf_adv = _hand_tree()
    leaf_adv[0] = float("nan")  # internal: ignored
    backup(tree, leaf_adv)
    leaf_adv[3] = float("inf")
    with pytest.raises(NonFiniteError, match=r"leaf_adv: 1 leaves have NaN or inf advantages \(nodes \[3\]\)"):
        backup(tree, leaf_adv)


def test_estimator_with_wrong_output_shape_is_named():
    @dataclass(frozen=True)
    class Broken(BackupEstimator):
        def weights(self, siblings):
            return siblings.sum(siblings.advantage)  # per parent, not per edge

    tree, leaf_adv = _hand_tree()
    with pytest.raises(EstimatorError, match=r"estimator Broken: weights\(\) must return one weight per edge \(2\)"):
        backup(tree, leaf_adv, Broken())

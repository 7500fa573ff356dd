"""BranchGRPO's reward fusion and depth-wise advantages against the toolkit's backup and depth_normalize."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.treeadv.branchgrpo_reference import grow_forest, toolkit_tree, tree_advantages
from treeadv import NonFiniteError, Tree, TreeError, backup, depth_normalize, leaf_advantages

FUSIONS = {False: ("leaf", {}), True: ("logprob_softmax", {"temperature": 1.0})}
"""BranchGRPO's ``tree_prob_weighted`` to the toolkit's estimator and its options."""


@st.composite
def forests(draw, low: float = -10.0, high: float = 10.0):
    """A BranchGRPO forest (prompts, steps, split steps) with random leaf rewards and edge log-probs."""
    num_prompts = draw(st.integers(1, 2))
    num_steps = draw(st.integers(1, 6))
    split_steps = sorted(draw(st.sets(st.integers(0, num_steps - 1), min_size=1, max_size=4)))
    tree = toolkit_tree(num_prompts, num_steps, split_steps)
    floats = st.floats(low, high, allow_nan=False, width=64)
    values = torch.tensor(draw(st.lists(floats, min_size=tree.num_nodes, max_size=tree.num_nodes)), dtype=torch.float64)
    log_prob = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=tree.num_nodes, max_size=tree.num_nodes)),
                            dtype=torch.float64)
    return num_prompts, num_steps, split_steps, values, log_prob


def _peer(case, prob_weighted: bool, dtype=torch.float64):
    num_prompts, num_steps, split_steps, values, log_prob = case
    roots, _ = grow_forest(num_prompts, num_steps, split_steps)
    return tree_advantages(roots, values, log_prob, prob_weighted=prob_weighted, dtype=dtype)


def _toolkit(case, prob_weighted: bool):
    num_prompts, num_steps, split_steps, values, log_prob = case
    tree = toolkit_tree(num_prompts, num_steps, split_steps, log_prob)
    estimator, options = FUSIONS[prob_weighted]
    return tree, backup(tree, tree.scatter_leaves(values[tree.leaves()]), estimator, **options)


def test_hand_tree_six_steps_two_splits():
    # steps 0..5, splits at 0 and 2: 4 leaves; fused values are leaf means, advantages per depth
    values = torch.zeros(21, dtype=torch.float64)
    values[-4:] = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    tree = toolkit_tree(1, 6, [0, 2])
    fused = backup(tree, values, "leaf")
    assert fused[:3].tolist() == [3.75, 1.5, 6.0]  # root, then the two children of the split at step 0
    advantage = depth_normalize(tree, fused)
    assert advantage[0] == 0  # the root is alone at depth 0
    std = math.sqrt(((1.5 - 3.75) ** 2 + (6 - 3.75) ** 2) / 1)  # Bessel over the two depth-1 nodes
    assert advantage[1:3].tolist() == pytest.approx([-2.25 / (std + 1e-8), 2.25 / (std + 1e-8)], rel=1e-12)
    leaf_std = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64).std()
    assert advantage[-4:].tolist() == pytest.approx(((values[-4:] - 3.75) / (leaf_std + 1e-8)).tolist(), rel=1e-12)
    peer_fused, peer_advantage = _peer((1, 6, [0, 2], values, torch.zeros(21, dtype=torch.float64)), False)
    assert torch.allclose(fused, peer_fused, rtol=0, atol=1e-12)
    assert torch.allclose(advantage, peer_advantage, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prob_weighted", [False, True])
@given(case=forests())
def test_fusion_is_the_toolkit_backup(case, prob_weighted):
    """Uniform fusion is the ``leaf`` backup, prob-weighted fusion the ``logprob_softmax`` backup at temperature 1."""
    peer_fused, _ = _peer(case, prob_weighted)
    _, fused = _toolkit(case, prob_weighted)
    assert torch.allclose(fused, peer_fused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prob_weighted", [False, True])
@given(case=forests())
def test_fusion_in_the_peers_float32_is_close(case, prob_weighted):
    peer_fused, _ = _peer(case, prob_weighted, dtype=torch.float32)
    _, fused = _toolkit(case, prob_weighted)
    assert torch.allclose(fused, peer_fused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prob_weighted", [False, True])
@given(case=forests())
def test_depth_normalize_of_the_backup_is_the_peers_advantage(case, prob_weighted):
    _, peer_advantage = _peer(case, prob_weighted)
    tree, fused = _toolkit(case, prob_weighted)
    assert torch.allclose(depth_normalize(tree, fused), peer_advantage, rtol=0, atol=1e-9)


@pytest.mark.parametrize("prob_weighted", [False, True])
@given(case=forests(low=-1.0, high=1.0))
def test_leaf_normalisation_first_changes_nothing(case, prob_weighted):
    """Group-normalised leaves are ``a r + b`` per prompt, ``a > 0``, and the fusion is convex, so the
    depth-wise advantages agree up to ``eps / std`` (here ``<= 1e-8 / 0.05 * |A|``)."""
    _, peer_advantage = _peer(case, prob_weighted)
    tree, fused = _toolkit(case, prob_weighted)
    key = tree.root * (tree.max_depth + 1) + tree.depth
    for group in torch.unique(key):  # a test-side loop: keep clear of the eps and min_std edges
        members = fused[key == group]
        assume(members.numel() == 1 or float(members.std()) >= 0.05)
    leaves = tree.leaves()
    normalised = tree.scatter_leaves(leaf_advantages(case[3][leaves], tree.group[leaves]))
    estimator, options = FUSIONS[prob_weighted]
    advantage = depth_normalize(tree, backup(tree, normalised, estimator, **options))
    assert torch.allclose(advantage, peer_advantage, rtol=0, atol=1e-6)


def test_lone_nodes_and_equal_values_give_zero():
    tree = Tree.from_parents([-1, 0, 0, -1, 3, 3])
    values = torch.tensor([5.0, 1.0, 1.0 + 1e-7, 2.0, 0.0, 3.0])
    advantage = depth_normalize(tree, values)
    # roots alone at depth 0; the first tree's depth 1 is below min_std; the second is +-1/sqrt(2)
    expected = [0.0, 0.0, 0.0, 0.0, -1.5 / (1.5 * math.sqrt(2)), 1.5 / (1.5 * math.sqrt(2))]
    assert advantage.tolist() == pytest.approx(expected, abs=1e-6)
    assert advantage.dtype == torch.float32


def test_groups_are_per_tree_not_per_prompt():
    tree = Tree.from_parents([-1, 0, 0, -1, 3, 3], group=[0, 0, 0, 0, 0, 0])
    values = torch.tensor([0.0, 0.0, 2.0, 0.0, 10.0, 20.0], dtype=torch.float64)
    advantage = depth_normalize(tree, values)
    assert torch.allclose(advantage[1:3], advantage[4:6], atol=1e-6)  # each tree on its own scale
    assert advantage.dtype == torch.float64


@pytest.mark.parametrize(("values", "error", "message"), [
    (torch.zeros(3), TreeError, r"values: expected one value per node, shape \(4,\), got \(3,\)"),
    (torch.zeros(4, dtype=torch.long), TypeError, "values: expected a floating-point tensor"),
    (torch.tensor([0.0, float("nan"), 0.0, 0.0]), NonFiniteError, r"values: 1 nodes have NaN or inf values \(nodes \[1\]\)"),
])
def test_bad_values_name_the_argument(values, error, message):
    with pytest.raises(error, match=message):
        depth_normalize(Tree.from_parents([-1, 0, 0, 1]), values)

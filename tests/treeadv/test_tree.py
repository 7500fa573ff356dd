"""Tree construction, validation and structural helpers."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given

from tests.treeadv.reference import children_lists, reference_depths
from treeadv import NonFiniteError, Tree, TreeError
from treeadv.testing import forests

# Two trees: 0 -> {1, 2}, 1 -> {3}; and a lone root 4 -> {5}. Nodes deliberately not in level order.
PARENT = [-1, 0, 0, 1, -1, 4]


def test_from_parents_fields_on_a_hand_built_forest():
    tree = Tree.from_parents(PARENT, torch.tensor([0.0, -1.0, -2.0, -3.0, 0.0, -0.5]))
    assert tree.depth.tolist() == [0, 1, 1, 2, 0, 1]
    assert tree.root.tolist() == [0, 0, 0, 0, 4, 4]
    assert tree.group.tolist() == [0, 0, 0, 0, 1, 1]
    assert tree.is_leaf.tolist() == [False, False, True, True, False, True]
    assert tree.roots().tolist() == [0, 4]
    assert tree.leaves().tolist() == [2, 3, 5]
    assert tree.num_children().tolist() == [2, 1, 0, 0, 1, 0]
    assert tree.children(0).tolist() == [1, 2]
    assert tree.max_depth == 2


def test_regular_layout_is_level_major_with_contiguous_children():
    tree = Tree.regular(2, 3, 2, group=[7, 9])
    assert tree.num_nodes == 2 + 6 + 18
    assert tree.parent[:8].tolist() == [-1, -1, 0, 0, 0, 1, 1, 1]
    assert tree.parent[8:11].tolist() == [2, 2, 2]
    assert tree.depth.tolist() == [0] * 2 + [1] * 6 + [2] * 18
    assert tree.root[8:].tolist() == [0] * 9 + [1] * 9
    assert tree.group[8:].tolist() == [7] * 9 + [9] * 9
    assert tree.leaves().tolist() == list(range(8, 26))


def test_regular_with_per_level_branching_matches_from_parents():
    tree = Tree.regular(3, [2, 4, 1])
    rebuilt = Tree.from_parents(tree.parent)
    assert tree.num_nodes == 3 * (1 + 2 + 8 + 8)
    for field in ("depth", "root", "group", "is_leaf"):
        assert torch.equal(getattr(rebuilt, field), getattr(tree, field)), field


@given(forests())
def test_depth_root_and_leaves_match_a_node_by_node_reference(tree):
    parent = tree.parent.tolist()
    assert tree.depth.tolist() == reference_depths(parent)
    kids = children_lists(parent)
    assert tree.is_leaf.tolist() == [not k for k in kids]
    for node in range(tree.num_nodes):
        root = node
        while parent[root] >= 0:
            root = parent[root]
        assert int(tree.root[node]) == root
        assert int(tree.group[node]) == int(tree.group[root])


@given(forests())
def test_child_index_levels_and_paths_agree_with_parent_pointers(tree):
    offsets, children = tree.child_index()
    kids = children_lists(tree.parent.tolist())
    for node in range(tree.num_nodes):
        assert children[offsets[node] : offsets[node + 1]].tolist() == kids[node]
    order = tree.level_order()
    assert sorted(order.tolist()) == list(range(tree.num_nodes))
    assert bool((tree.depth[order][1:] >= tree.depth[order][:-1]).all())
    paths = tree.paths()
    for row, leaf in zip(paths.tolist(), tree.leaves().tolist()):
        path = [n for n in row if n >= 0]
        assert path[-1] == leaf and tree.parent[path[0]] == -1
        assert all(tree.parent[b] == a for a, b in itertools.pairwise(path))


def test_scatter_leaves_and_relabel():
    tree = Tree.from_parents(PARENT)
    values = tree.scatter_leaves(torch.tensor([1.0, 2.0, 3.0]), fill=-9.0)
    assert values.tolist() == [-9.0, -9.0, 1.0, 2.0, -9.0, 3.0]
    order = torch.tensor([5, 4, 3, 2, 1, 0])
    moved = tree.relabel(order)
    assert moved.parent.tolist() == [1, -1, 4, 5, 5, -1]
    assert moved.depth.tolist() == tree.depth[order].tolist()
    assert moved.root.tolist() == [1, 1, 5, 5, 5, 5]


def test_concat_renumbers_parents_roots_and_groups():
    a = Tree.regular(1, 2, 1)
    b = Tree.from_parents(PARENT)
    joined = Tree.concat([a, b])
    assert joined.parent.tolist() == [-1, 0, 0, -1, 3, 3, 4, -1, 7]
    assert joined.root.tolist() == [0, 0, 0, 3, 3, 3, 3, 7, 7]
    assert joined.group.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    shared = Tree.concat([a, a], distinct_groups=False)
    assert shared.group.tolist() == [0] * 6


def test_payload_travels_with_indexing():
    tree = Tree.regular(2, 2, 1, payload={"latent": torch.arange(6.0).reshape(6, 1)})
    assert tree.relabel(torch.tensor([1, 0, 2, 3, 4, 5])).payload["latent"][0].item() == 1.0


@pytest.mark.parametrize(
    ("parent", "message"),
    [
        ([-1, 0, 5], r"parent: 1 nodes point outside \[-1, 2\] \(nodes \[2\], values \[5\]\)"),
        ([-1, 0, -3], r"parent: 1 nodes point outside"),
        ([1, 2, 0], r"parent: 3 nodes never reach a root .* cycle"),
        ([-1, 2, 1], r"parent: 2 nodes never reach a root \(nodes \[1, 2\]\)"),
        ([[-1, 0]], r"parent: expected a 1-D tensor"),
        ([-1.0, 0.0], r"parent: expected integer node indices"),
    ],
)
def test_from_parents_rejects_malformed_parents(parent, message):
    with pytest.raises(TreeError, match=message):
        Tree.from_parents(torch.tensor(parent))


def test_from_parents_rejects_bad_log_probs_and_groups():
    with pytest.raises(NonFiniteError, match=r"log_prob: 1 non-root nodes .* \(nodes \[2\]\)"):
        Tree.from_parents([-1, 0, 0], torch.tensor([float("nan"), 0.0, float("-inf")]))
    with pytest.raises(TreeError, match=r"log_prob: expected shape \(3,\)"):
        Tree.from_parents([-1, 0, 0], torch.zeros(2))
    with pytest.raises(TreeError, match=r"group: 1 nodes differ from their root's group \(nodes \[2\]\)"):
        Tree.from_parents([-1, 0, 0], group=[3, 3, 4])
    with pytest.raises(TreeError, match=r"group: Tree.regular takes one id per tree \(2\)"):
        Tree.regular(2, 2, 1, group=[0, 1, 2])
    with pytest.raises(TreeError, match=r"branching: every level needs >= 1 child"):
        Tree.regular(2, [2, 0])
    with pytest.raises(TreeError, match=r"num_trees: expected an int >= 1, got 0"):
        Tree.regular(0, 2, 1)


def test_roots_log_prob_is_ignored_even_if_not_finite():
    tree = Tree.from_parents([-1, 0], torch.tensor([float("nan"), -1.0]))
    assert tree.is_leaf.tolist() == [False, True]

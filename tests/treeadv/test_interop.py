"""Round trips through torchrl.data.Tree."""

from __future__ import annotations

import torch
from hypothesis import given

from treeadv import Tree
from treeadv.interop import from_torchrl, to_torchrl
from treeadv.testing import forests

FIELDS = ("parent", "log_prob", "depth", "root", "group", "is_leaf")


def test_regular_forest_converts_densely_and_back():
    tree = Tree.regular(2, [2, 3], log_prob=torch.randn(2 + 4 + 12), group=[5, 6])
    tree.payload["latent"] = torch.randn(tree.num_nodes, 2, 2)
    converted = to_torchrl(tree)
    assert converted.batch_size == torch.Size([2])
    assert converted.subtree.subtree.batch_size == torch.Size([2, 2, 3])  # one tensorclass per level
    first = converted[0]
    assert first.num_children == 2
    assert len(first.vertices(key_type="path")) == 1 + 2 + 6
    back = from_torchrl(converted)
    for field in FIELDS:
        assert torch.equal(getattr(back, field), getattr(tree, field)), field
    assert torch.equal(back.payload["latent"], tree.payload["latent"])


@given(forests(dtype=torch.float32))
def test_any_forest_round_trips(tree):
    back = from_torchrl(to_torchrl(tree))
    for field in FIELDS:
        assert torch.equal(getattr(back, field), getattr(tree, field)), field


def test_single_torchrl_tree_without_ids_is_numbered_breadth_first():
    # 0 -> {2, 3}, 3 -> {1}: not breadth-first, so renumbering shows.
    tree = Tree.from_parents([-1, 3, 0, 0], torch.tensor([0.0, -1.0, -2.0, -3.0]))
    single = to_torchrl(tree)[0]
    for vertex in single.vertices(key_type="path").values():
        vertex.node_id = None
    back = from_torchrl(single)
    assert back.parent.tolist() == [-1, 0, 0, 2]
    assert back.log_prob.tolist() == [0.0, -2.0, -3.0, -1.0]
